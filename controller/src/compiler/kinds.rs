//! The route kinds Agimo serves.

/// An HTTPRoute or a GRPCRoute (on HTTP and HTTPS listeners), or a TLSRoute
/// (on TLS listeners, either mode). All compile to the same rules: a
/// GRPCRoute's method match becomes a path; a TLSRoute's one rule matches
/// every connection of its hostnames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
}

impl RouteKind {
    /// Every kind.
    pub const ALL: [RouteKind; 3] = [RouteKind::Http, RouteKind::Grpc, RouteKind::Tls];
    /// The kinds of HTTP and HTTPS listeners, in the order they list them in
    /// `supportedKinds`.
    pub const HTTP: [RouteKind; 2] = [RouteKind::Http, RouteKind::Grpc];
    /// The kinds of TLS listeners.
    pub const TLS: [RouteKind; 1] = [RouteKind::Tls];

    /// The kind's name in the Gateway API (`HTTPRoute`, `GRPCRoute`).
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }

    pub fn from_name(name: &str) -> Option<RouteKind> {
        RouteKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
