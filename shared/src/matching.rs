//! HTTPRoute match conditions, compiled, and the Gateway API's precedence
//! between them written as an ordering.

use std::cmp::Ordering;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde::{Serialize, Serializer};

/// The parts of a request that route matching reads.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    parsed_query: OnceLock<Vec<(String, String)>>,
}

impl<'a> RequestView<'a> {
    pub fn new(method: &'a Method, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> Self {
        RequestView { method, path, query, headers, parsed_query: OnceLock::new() }
    }

    /// Query parameters, percent-decoded, parsed once and only when a match asks.
    fn query_params(&self) -> &[(String, String)] {
        self.parsed_query.get_or_init(|| {
            self.query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
        })
    }
}

/// A compiled regular expression that must match the whole input.
#[derive(Clone, Debug)]
pub struct FullRegex {
    source: String,
    regex: Regex,
}

impl FullRegex {
    /// Compiles `pattern` anchored at both ends, with a size limit so a hostile
    /// pattern cannot make the compiler allocate without bound. The error is
    /// one line about the pattern as written.
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        let build = |p: &str| regex::RegexBuilder::new(p).size_limit(1 << 20).build();
        // Compile as written first, so an error points into the user's pattern.
        build(pattern).map_err(|e| RegexError::new(pattern, &e))?;
        let regex = build(&format!("^(?:{pattern})$")).map_err(|e| RegexError::new(pattern, &e))?;
        Ok(FullRegex { source: pattern.to_owned(), regex })
    }

    pub fn is_match(&self, input: &str) -> bool {
        self.regex.is_match(input)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Serialize for FullRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A regular expression that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression {pattern:?}: {reason}")]
pub struct RegexError {
    pattern: String,
    reason: String,
}

impl RegexError {
    fn new(pattern: &str, e: &regex::Error) -> Self {
        let reason = match e {
            // The syntax error's last line says what is wrong; the lines
            // above it repeat the pattern with a caret.
            regex::Error::Syntax(text) => {
                text.lines().last().unwrap_or_default().trim_start_matches("error: ").to_owned()
            }
            other => other.to_string(),
        };
        RegexError { pattern: pattern.to_owned(), reason }
    }
}

/// A path match. `Prefix` holds the prefix without a trailing slash, so `/`
/// is the empty string and matches every path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    RegularExpression(FullRegex),
}

impl PathMatch {
    /// A `PathPrefix` match, normalised: "When specified, a trailing `/` is
    /// ignored."
    pub fn prefix(value: &str) -> Self {
        PathMatch::Prefix(value.trim_end_matches('/').to_owned())
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(value) => path == value,
            PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
            PathMatch::RegularExpression(re) => re.is_match(path),
        }
    }
}

impl Serialize for PathMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (kind, value) = match self {
            PathMatch::Exact(v) => ("Exact", v.as_str()),
            PathMatch::Prefix(v) if v.is_empty() => ("PathPrefix", "/"),
            PathMatch::Prefix(v) => ("PathPrefix", v.as_str()),
            PathMatch::RegularExpression(re) => ("RegularExpression", re.as_str()),
        };
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("type", kind)?;
        map.serialize_entry("value", value)?;
        map.end()
    }
}

/// "`/abc`, `/abc/`, and `/abc/def` would all match the prefix `/abc`, but
/// the path `/abcd` would not."
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum ValueMatch {
    Exact(String),
    RegularExpression(FullRegex),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(expected) => expected.as_bytes() == value,
            ValueMatch::RegularExpression(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "crate::ser::display")]
    pub name: HeaderName,
    #[serde(flatten)]
    pub value: ValueMatch,
}

impl HeaderMatch {
    /// A header repeated in the request is compared as its values joined with
    /// `,`, as RFC 9110 section 5.3 allows a recipient to combine them.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        match values.next() {
            None => self.value.matches(first.as_bytes()),
            Some(second) => {
                let mut joined = first.as_bytes().to_vec();
                for v in std::iter::once(second).chain(values) {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                self.value.matches(&joined)
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: ValueMatch,
}

impl QueryParamMatch {
    /// "If a query param is repeated in an HTTP request, the behavior is
    /// purposely left undefined": Agimo matches the first occurrence.
    fn matches(&self, params: &[(String, String)]) -> bool {
        params
            .iter()
            .find(|(name, _)| *name == self.name)
            .is_some_and(|(_, value)| self.value.matches(value.as_bytes()))
    }
}

/// One `HTTPRouteMatch`: every condition must hold.
#[derive(Clone, Debug, Serialize)]
pub struct RequestMatch {
    pub path: PathMatch,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_display")]
    pub method: Option<Method>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    /// A GRPCRoute's match (its `method` compiled into `path`): ranked among
    /// other GRPCRoute matches by its service and method, not its path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRank>,
}

/// What orders a GRPCRoute match: the number of characters of its service
/// and of its method (0 when unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GrpcRank {
    pub service: usize,
    pub method: usize,
}

impl RequestMatch {
    /// The match a rule without `matches` gets: every request.
    pub fn any() -> Self {
        RequestMatch {
            path: PathMatch::Prefix(String::new()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
            grpc: None,
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path) && self.matches_besides_path(req)
    }

    /// Whether the path is the only condition.
    fn is_path_only(&self) -> bool {
        self.method.is_none() && self.headers.is_empty() && self.query_params.is_empty()
    }

    fn matches_besides_path(&self, req: &RequestView<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| h.matches(req.headers))
            && (self.query_params.is_empty() || {
                let params = req.query_params();
                self.query_params.iter().all(|q| q.matches(params))
            })
    }
}

/// The path conditions of a list of matches packed into one string and one
/// array, so that a lookup scans them without reading each match: with
/// thousands of routes loaded, each match read (and each path string behind
/// it) was a cache miss.
#[derive(Debug, Default)]
pub struct PathIndex {
    text: String,
    spans: Vec<PathSpan>,
}

#[derive(Clone, Copy, Debug)]
struct PathSpan {
    start: u32,
    len: u32,
    kind: SpanKind,
    path_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpanKind {
    Exact,
    Prefix,
    /// Tested on the match itself (a regular expression).
    Other,
}

impl PathIndex {
    pub fn new<'a>(matches: impl IntoIterator<Item = &'a RequestMatch>) -> Self {
        let mut index = PathIndex::default();
        for m in matches {
            let (kind, value) = match &m.path {
                PathMatch::Exact(v) => (SpanKind::Exact, v.as_str()),
                PathMatch::Prefix(v) => (SpanKind::Prefix, v.as_str()),
                PathMatch::RegularExpression(_) => (SpanKind::Other, ""),
            };
            let span = match (u32::try_from(index.text.len()), u32::try_from(value.len())) {
                (Ok(start), Ok(len)) if start.checked_add(len).is_some() => {
                    index.text.push_str(value);
                    PathSpan { start, len, kind, path_only: m.is_path_only() }
                }
                _ => PathSpan { start: 0, len: 0, kind: SpanKind::Other, path_only: false },
            };
            index.spans.push(span);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The position of the first indexed match that `req` satisfies;
    /// `matcher(i)` is the `i`th match as indexed, read only when its path
    /// matches and it has other conditions, or when its path is not indexed.
    pub fn find<'m>(&self, req: &RequestView<'_>, matcher: impl Fn(usize) -> &'m RequestMatch) -> Option<usize> {
        self.spans.iter().enumerate().find_map(|(i, span)| {
            let path = &self.text[span.start as usize..(span.start + span.len) as usize];
            let found = match span.kind {
                SpanKind::Exact => req.path == path && (span.path_only || matcher(i).matches_besides_path(req)),
                SpanKind::Prefix => {
                    prefix_matches(path, req.path) && (span.path_only || matcher(i).matches_besides_path(req))
                }
                SpanKind::Other => matcher(i).matches(req),
            };
            found.then_some(i)
        })
    }
}

/// Where a match comes from, for the tie-breaks that follow the match itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchOrigin {
    /// The route's `creationTimestamp` as seconds since the epoch, if known.
    #[serde(skip)]
    pub route_created: Option<i64>,
    pub route_namespace: String,
    pub route_name: String,
    pub rule_index: usize,
    pub match_index: usize,
}

/// Orders two matches by Gateway API precedence: `Less` means `a` wins.
///
/// From `HTTPRouteRule.matches`:
///
/// > Across all rules specified on applicable Routes, precedence must be
/// > given to the match having:
/// > * "Exact" path match.
/// > * "Prefix" path match with largest number of characters.
/// > * Method match.
/// > * Largest number of header matches.
/// > * Largest number of query param matches.
/// >
/// > Note: The precedence of RegularExpression path matches are
/// > implementation-specific.
/// >
/// > If ties still exist across multiple Routes, matching precedence MUST be
/// > determined in order of the following criteria, continuing on ties:
/// > * The oldest Route based on creation timestamp.
/// > * The Route appearing first in alphabetical order by "{namespace}/{name}".
/// >
/// > If ties still exist within an HTTPRoute, matching precedence MUST be
/// > granted to the FIRST matching rule (in list order) with a match meeting
/// > the above criteria.
///
/// Agimo ranks RegularExpression paths between Exact and Prefix, longer
/// patterns first. Hostname precedence comes before all of this and is
/// handled by the route table's host buckets.
///
/// GRPCRoute matches (`grpc`) are ranked as `GRPCRouteRule.matches` says:
///
/// > * Characters in a matching service.
/// > * Characters in a matching method.
/// > * Header matches.
///
/// then by the same route and rule tie-breaks. (A listener never serves
/// HTTPRoutes and GRPCRoutes for the same hostname, so the two kinds never
/// meet in a table; if they did, GRPCRoute matches would come first.)
pub fn precedence(a: (&RequestMatch, &MatchOrigin), b: (&RequestMatch, &MatchOrigin)) -> Ordering {
    let ((ma, oa), (mb, ob)) = (a, b);
    let by_match = match (ma.grpc, mb.grpc) {
        (Some(ga), Some(gb)) => gb
            .service
            .cmp(&ga.service)
            .then_with(|| gb.method.cmp(&ga.method))
            .then_with(|| mb.headers.len().cmp(&ma.headers.len())),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => path_rank(&ma.path)
            .cmp(&path_rank(&mb.path))
            .then_with(|| path_len(&mb.path).cmp(&path_len(&ma.path)))
            .then_with(|| mb.method.is_some().cmp(&ma.method.is_some()))
            .then_with(|| mb.headers.len().cmp(&ma.headers.len()))
            .then_with(|| mb.query_params.len().cmp(&ma.query_params.len())),
    };
    by_match
        .then_with(|| created(oa).cmp(&created(ob)))
        .then_with(|| oa.route_namespace.cmp(&ob.route_namespace))
        .then_with(|| oa.route_name.cmp(&ob.route_name))
        .then_with(|| oa.rule_index.cmp(&ob.rule_index))
        .then_with(|| oa.match_index.cmp(&ob.match_index))
}

/// A route without a known creation time counts as the newest, which keeps the
/// order total.
fn created(origin: &MatchOrigin) -> i64 {
    origin.route_created.unwrap_or(i64::MAX)
}

fn path_rank(path: &PathMatch) -> u8 {
    match path {
        PathMatch::Exact(_) => 0,
        PathMatch::RegularExpression(_) => 1,
        PathMatch::Prefix(_) => 2,
    }
}

fn path_len(path: &PathMatch) -> usize {
    match path {
        PathMatch::Exact(v) | PathMatch::Prefix(v) => v.len(),
        PathMatch::RegularExpression(re) => re.as_str().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(method: &'a Method, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView::new(method, path, query, headers)
    }

    #[test]
    fn the_path_index_finds_what_testing_each_match_finds() {
        let header = |name: &str, value: &str| HeaderMatch {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value: ValueMatch::Exact(value.into()),
        };
        let with = |path: PathMatch, method: Option<Method>, headers: Vec<HeaderMatch>| RequestMatch {
            path,
            method,
            headers,
            query_params: Vec::new(),
            grpc: None,
        };
        let matches = vec![
            with(PathMatch::Exact("/a/b".into()), None, vec![header("x-tenant", "t1")]),
            with(PathMatch::Exact("/a/b".into()), None, vec![]),
            with(PathMatch::RegularExpression(FullRegex::new("/r/[0-9]+").unwrap()), None, vec![]),
            with(PathMatch::prefix("/a/"), Some(Method::POST), vec![]),
            with(PathMatch::prefix("/a"), None, vec![header("x-tenant", "t2")]),
            RequestMatch {
                query_params: vec![QueryParamMatch { name: "q".into(), value: ValueMatch::Exact("1".into()) }],
                ..RequestMatch::any()
            },
            with(PathMatch::prefix("/ab"), None, vec![]),
            RequestMatch::any(),
        ];
        let index = PathIndex::new(&matches);
        assert_eq!(index.len(), matches.len());
        let t1: HeaderMap = [(HeaderName::from_static("x-tenant"), "t1".parse().unwrap())].into_iter().collect();
        let t2: HeaderMap = [(HeaderName::from_static("x-tenant"), "t2".parse().unwrap())].into_iter().collect();
        let none = HeaderMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for method in [Method::GET, Method::POST] {
            for path in ["/a/b", "/a/bc", "/a", "/a/c", "/ab", "/abc", "/r/12", "/r/x", "/"] {
                for query in [None, Some("q=1"), Some("q=2")] {
                    for headers in [&none, &t1, &t2] {
                        let req = view(&method, path, query, headers);
                        let expected = matches.iter().position(|m| m.matches(&req));
                        assert_eq!(
                            index.find(&req, |i| &matches[i]),
                            expected,
                            "{method} {path} {query:?} {headers:?}"
                        );
                        seen.insert(expected);
                    }
                }
            }
        }
        // Every match wins for some request.
        assert_eq!(seen, (0..matches.len()).map(Some).collect(), "{seen:?}");
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let p = PathMatch::prefix("/abc/");
        for ok in ["/abc", "/abc/", "/abc/def"] {
            assert!(p.matches(ok), "{ok}");
        }
        assert!(!p.matches("/abcd"));
        assert!(!p.matches("/ab"));
        assert!(PathMatch::prefix("/").matches("/anything/at/all"));
    }

    #[test]
    fn exact_and_regex_paths() {
        assert!(PathMatch::Exact("/one".into()).matches("/one"));
        assert!(!PathMatch::Exact("/one".into()).matches("/one/"));
        let re = PathMatch::RegularExpression(FullRegex::new("/v[0-9]+/.*").unwrap());
        assert!(re.matches("/v2/users"));
        assert!(!re.matches("/x/v2/users"), "regex must match the whole path");
    }

    #[test]
    fn headers_are_case_insensitive_by_name_and_exact_by_value() {
        let mut headers = HeaderMap::new();
        headers.insert("Version", "two".parse().unwrap());
        let m = HeaderMatch { name: HeaderName::from_static("version"), value: ValueMatch::Exact("two".into()) };
        assert!(m.matches(&headers));
        headers.insert("version", "Two".parse().unwrap());
        assert!(!m.matches(&headers));
        headers.append("version", "three".parse().unwrap());
        let joined =
            HeaderMatch { name: HeaderName::from_static("version"), value: ValueMatch::Exact("Two,three".into()) };
        assert!(joined.matches(&headers));
    }

    #[test]
    fn query_params_are_decoded_and_first_value_wins() {
        let headers = HeaderMap::new();
        let m = RequestMatch {
            query_params: vec![QueryParamMatch {
                name: "animal".into(),
                value: ValueMatch::Exact("whale shark".into()),
            }],
            ..RequestMatch::any()
        };
        assert!(m.matches(&view(&Method::GET, "/", Some("animal=whale%20shark&animal=dolphin"), &headers)));
        assert!(!m.matches(&view(&Method::GET, "/", Some("animal=dolphin&animal=whale%20shark"), &headers)));
        assert!(!m.matches(&view(&Method::GET, "/", None, &headers)));
    }

    #[test]
    fn method_match() {
        let headers = HeaderMap::new();
        let m = RequestMatch { method: Some(Method::POST), ..RequestMatch::any() };
        assert!(m.matches(&view(&Method::POST, "/", None, &headers)));
        assert!(!m.matches(&view(&Method::GET, "/", None, &headers)));
    }

    fn origin(ns: &str, name: &str, created: Option<i64>, rule: usize) -> MatchOrigin {
        MatchOrigin {
            route_created: created,
            route_namespace: ns.into(),
            route_name: name.into(),
            rule_index: rule,
            match_index: 0,
        }
    }

    #[test]
    fn grpc_matches_rank_by_service_then_method_then_headers() {
        let o = origin("ns", "r", None, 0);
        let grpc = |path: PathMatch, service: usize, method: usize, headers: usize| RequestMatch {
            path,
            headers: (0..headers)
                .map(|i| HeaderMatch {
                    name: HeaderName::from_bytes(format!("h{i}").as_bytes()).unwrap(),
                    value: ValueMatch::Exact("v".into()),
                })
                .collect(),
            grpc: Some(GrpcRank { service, method }),
            ..RequestMatch::any()
        };
        // What a request for /pkg.Svc/Get could meet: service and method,
        // service only, method only (a regular expression), neither.
        let both = grpc(PathMatch::Exact("/pkg.Svc/Get".into()), 7, 3, 0);
        let service = grpc(PathMatch::prefix("/pkg.Svc/"), 7, 0, 0);
        let method = grpc(PathMatch::RegularExpression(FullRegex::new("/[^/]+/Get").unwrap()), 0, 3, 0);
        let neither_headers = grpc(PathMatch::prefix("/"), 0, 0, 2);
        let neither = grpc(PathMatch::prefix("/"), 0, 0, 0);
        let mut all = [&neither, &method, &neither_headers, &service, &both];
        all.sort_by(|a, b| precedence((a, &o), (b, &o)));
        let ranks: Vec<(usize, usize, usize)> =
            all.iter().map(|m| (m.grpc.unwrap().service, m.grpc.unwrap().method, m.headers.len())).collect();
        assert_eq!(ranks, vec![(7, 3, 0), (7, 0, 0), (0, 3, 0), (0, 0, 2), (0, 0, 0)]);
    }

    #[test]
    fn precedence_orders_as_the_spec_lists() {
        let o = origin("ns", "r", None, 0);
        let exact = RequestMatch { path: PathMatch::Exact("/a".into()), ..RequestMatch::any() };
        let long_prefix = RequestMatch { path: PathMatch::prefix("/a/b/c"), ..RequestMatch::any() };
        let short_prefix_method =
            RequestMatch { path: PathMatch::prefix("/a"), method: Some(Method::GET), ..RequestMatch::any() };
        let short_prefix_headers = RequestMatch {
            path: PathMatch::prefix("/a"),
            headers: vec![HeaderMatch { name: HeaderName::from_static("x"), value: ValueMatch::Exact("1".into()) }],
            ..RequestMatch::any()
        };
        let short_prefix = RequestMatch { path: PathMatch::prefix("/a"), ..RequestMatch::any() };
        let mut all = [&short_prefix, &short_prefix_headers, &long_prefix, &short_prefix_method, &exact];
        all.sort_by(|a, b| precedence((a, &o), (b, &o)));
        let paths: Vec<_> =
            all.iter().map(|m| format!("{:?}", (&m.path, m.method.is_some(), m.headers.len()))).collect();
        assert_eq!(
            paths,
            vec![
                format!("{:?}", (&exact.path, false, 0)),
                format!("{:?}", (&long_prefix.path, false, 0)),
                format!("{:?}", (&short_prefix_method.path, true, 0)),
                format!("{:?}", (&short_prefix_headers.path, false, 1)),
                format!("{:?}", (&short_prefix.path, false, 0)),
            ]
        );
    }

    #[test]
    fn ties_break_on_age_then_name_then_rule_order() {
        let m = RequestMatch::any();
        let older = origin("b", "z", Some(10), 0);
        let newer = origin("a", "a", Some(20), 0);
        assert_eq!(precedence((&m, &older), (&m, &newer)), Ordering::Less);
        let a = origin("a", "z", None, 5);
        let b = origin("b", "a", None, 0);
        assert_eq!(precedence((&m, &a), (&m, &b)), Ordering::Less);
        let first = origin("a", "a", None, 0);
        let second = origin("a", "a", None, 1);
        assert_eq!(precedence((&m, &first), (&m, &second)), Ordering::Less);
    }
}
