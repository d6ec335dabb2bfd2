//! The route kinds Agimo serves on HTTP and HTTPS listeners.

/// An HTTPRoute or a GRPCRoute: both attach to HTTP and HTTPS listeners and
/// compile to the same rules (a GRPCRoute's method match becomes a path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// Every kind, in the order listeners list them in `supportedKinds`.
    pub const ALL: [RouteKind; 2] = [RouteKind::Http, RouteKind::Grpc];

    /// The kind's name in the Gateway API (`HTTPRoute`, `GRPCRoute`).
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
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
