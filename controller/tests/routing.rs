//! Routing as a client sees it: Gateway API YAML compiled and served by an
//! in-process dataplane in front of echo backends on loopback.

mod support;

use std::time::Duration;

use agimo_testkit::client::{self, Mode};
use support::{Agimo, base_yaml};

fn route(body: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
{body}"
    )
}

#[tokio::test]
async fn path_matches_follow_gateway_api_precedence() {
    let yaml = base_yaml(&["exact", "long-prefix", "prefix", "regex"])
        + &route(
            "metadata: {name: paths, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /match/}}]
    backendRefs: [{name: prefix, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix}}]
    backendRefs: [{name: long-prefix, port: 80}]
  - matches: [{path: {type: Exact, value: /match/exact}}]
    backendRefs: [{name: exact, port: 80}]
  - matches: [{path: {type: RegularExpression, value: '/match/[0-9]+'}}]
    backendRefs: [{name: regex, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["exact", "long-prefix", "prefix", "regex"]).await;
    let cases = [
        ("/match/exact", Some("exact")),
        ("/match/exact/", Some("prefix")),
        ("/match/prefix", Some("long-prefix")),
        ("/match/prefix/one", Some("long-prefix")),
        ("/match/prefixes", Some("prefix")),
        ("/match/123", Some("regex")),
        ("/match/123/x", Some("prefix")),
        ("/match", Some("prefix")),
        ("/matches", None),
        ("/", None),
    ];
    for (path, want) in cases {
        let reply = agimo.get(8080, "any.example", path).await;
        match want {
            Some(backend) => {
                assert_eq!(reply.status, 200, "{path}");
                assert_eq!(reply.echo().backend, backend, "{path}");
            }
            None => {
                assert_eq!(reply.status, 404, "{path}");
                assert_eq!(reply.header("x-agimo-reason"), Some("no-route"), "{path}");
            }
        }
    }
}

#[tokio::test]
async fn header_query_and_method_matches() {
    let yaml = base_yaml(&["v1", "v2", "v3", "v4"])
        + &route(
            "metadata: {name: conditions, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - headers: [{name: version, value: two}]
    backendRefs: [{name: v2, port: 80}]
  - matches:
    - headers: [{name: version, value: two}, {name: color, value: orange}]
    backendRefs: [{name: v3, port: 80}]
  - matches:
    - queryParams: [{name: animal, value: whale}]
    - headers: [{name: x-id, type: RegularExpression, value: '[0-9]+'}]
    backendRefs: [{name: v4, port: 80}]
  - matches:
    - method: POST
      path: {type: PathPrefix, value: /}
    backendRefs: [{name: v3, port: 80}]
  - backendRefs: [{name: v1, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1", "v2", "v3", "v4"]).await;
    let send = |req: http::Request<_>| client::send(agimo.addr(8080), Mode::Http1, req);
    let with_headers = |pairs: &[(&'static str, &str)]| {
        let mut req = client::get("h.example", "/");
        for (k, v) in pairs {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        req
    };
    let backend = |reply: agimo_testkit::client::Reply| reply.echo().backend;
    assert_eq!(backend(send(with_headers(&[("Version", "two")])).await.unwrap()), "v2");
    // Two header matches beat one.
    assert_eq!(backend(send(with_headers(&[("version", "two"), ("color", "orange")])).await.unwrap()), "v3");
    assert_eq!(backend(send(with_headers(&[("version", "Two")])).await.unwrap()), "v1", "values are case-sensitive");
    assert_eq!(backend(send(with_headers(&[("x-id", "42")])).await.unwrap()), "v4");
    assert_eq!(backend(send(with_headers(&[("x-id", "42a")])).await.unwrap()), "v1", "regex matches the whole value");
    assert_eq!(backend(agimo.get(8080, "h.example", "/?animal=whale").await), "v4");
    assert_eq!(backend(agimo.get(8080, "h.example", "/?animal=dolphin").await), "v1");
    let mut post = client::get("h.example", "/");
    *post.method_mut() = http::Method::POST;
    assert_eq!(backend(send(post).await.unwrap()), "v3");
}

#[tokio::test]
async fn hostnames_choose_listener_and_routes() {
    let yaml = support::gateway_yaml(
        "  - {name: exact, port: 8080, protocol: HTTP, hostname: foo.bar.com}
  - {name: wildcard, port: 8080, protocol: HTTP, hostname: '*.bar.com'}
  - {name: any, port: 8080, protocol: HTTP}
",
    ) + &support::service_yaml("exact")
        + &support::service_yaml("wildcard")
        + &support::service_yaml("any")
        + &support::service_yaml("specific-route")
        + &route(
            "metadata: {name: on-exact, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: exact}]
  rules: [{backendRefs: [{name: exact, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: on-wildcard, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: wildcard}]
  rules: [{backendRefs: [{name: wildcard, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: specific, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: wildcard}]
  hostnames: [deep.baz.bar.com]
  rules: [{backendRefs: [{name: specific-route, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: on-any, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: any}]
  rules: [{backendRefs: [{name: any, port: 80}]}]
",
        );
    let agimo = Agimo::start(&yaml, &["exact", "wildcard", "any", "specific-route"]).await;
    let cases = [
        ("foo.bar.com", "exact"),
        ("FOO.bar.com:1234", "exact"),
        ("x.bar.com", "wildcard"),
        ("a.b.bar.com", "wildcard"),
        ("deep.baz.bar.com", "specific-route"),
        ("bar.com", "any"),
        ("elsewhere.org", "any"),
    ];
    for (host, want) in cases {
        let reply = agimo.get(8080, host, "/").await;
        assert_eq!(reply.status, 200, "{host}");
        let echo = reply.echo();
        assert_eq!(echo.backend, want, "{host}");
        // The Host header reaches the backend unchanged, port included.
        assert_eq!(echo.host, host);
    }
}

#[tokio::test]
async fn older_route_wins_a_tie_then_alphabetical_order() {
    let yaml = base_yaml(&["old", "new", "alpha"])
        + &route(
            "metadata: {name: b-newer, namespace: default, creationTimestamp: '2026-01-02T00:00:00Z'}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /tie}}], backendRefs: [{name: new, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: z-older, namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /tie}}], backendRefs: [{name: old, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: a-same-age, namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /alpha}}], backendRefs: [{name: alpha, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: b-same-age, namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /alpha}}], backendRefs: [{name: old, port: 80}]}]
",
        );
    let agimo = Agimo::start(&yaml, &["old", "new", "alpha"]).await;
    assert_eq!(agimo.get(8080, "a", "/tie").await.echo().backend, "old");
    assert_eq!(agimo.get(8080, "a", "/alpha").await.echo().backend, "alpha");
}

#[tokio::test]
async fn weights_split_traffic_and_weight_zero_gets_none() {
    let yaml = base_yaml(&["v1", "v2", "v3"])
        + &route(
            "metadata: {name: weighted, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - {name: v1, port: 80, weight: 70}
    - {name: v2, port: 80, weight: 30}
    - {name: v3, port: 80, weight: 0}
",
        );
    let agimo = Agimo::start(&yaml, &["v1", "v2", "v3"]).await;
    let n = 1000;
    let hits = agimo.backends_hit(8080, "w.example", "/", n).await;
    let share = |b: &str| *hits.get(b).unwrap_or(&0) as f64 / n as f64;
    // Binomial standard deviation at n=1000, p=0.7 is 1.45%; allow ±5 points
    // as the conformance suite does.
    assert!((share("v1") - 0.7).abs() < 0.05, "{hits:?}");
    assert!((share("v2") - 0.3).abs() < 0.05, "{hits:?}");
    assert_eq!(hits.get("v3"), None, "{hits:?}");
}

#[tokio::test]
async fn redirects_follow_the_spec_port_rules() {
    let yaml = base_yaml(&[])
        + &route(
            "metadata: {name: redirects, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {port: 8443, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
",
        );
    let agimo = Agimo::start(&yaml, &[]).await;
    let reply = agimo.get(8080, "site.example:8080", "/host/a?q=1").await;
    assert_eq!(reply.status, 302);
    // No scheme given: the listener's port, shown because it is not 80.
    assert_eq!(reply.header("location"), Some("http://example.org:8080/host/a?q=1"));
    let reply = agimo.get(8080, "site.example", "/moved").await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("https://site.example/moved"));
    let reply = agimo.get(8080, "site.example", "/old/page").await;
    assert_eq!(reply.header("location"), Some("http://site.example:8443/new/page"));
}

#[tokio::test]
async fn request_headers_are_modified_and_forwarded_byte_exact() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: headers, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set-value}]
        add: [{name: X-Add, value: added}]
        remove: [X-Remove]
    backendRefs: [{name: v1, port: 80}]
",
        );
    let config = agimo_dataplane::Config {
        escaped_slashes: agimo_dataplane::EscapedSlashes::Keep,
        ..agimo_dataplane::Config::default()
    };
    let agimo = Agimo::start_with(&yaml, &["v1"], config).await;
    let mut req = client::get("h.example", "/a%2fb/./c//d?x=%2F.&y=1&y=2#");
    *req.uri_mut() = "/a%2fb/./c//d?x=%2F.&y=1&y=2".parse().unwrap();
    for (k, v) in [
        ("x-set", "client"),
        ("x-add", "client"),
        ("x-remove", "gone"),
        ("x-forwarded-for", "203.0.113.9"),
        ("connection", "x-hop"),
        ("x-hop", "hop-by-hop"),
    ] {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let echo = client::send(agimo.addr(8080), Mode::Http1, req).await.unwrap().echo();
    // The path normalised (tests/paths.rs), the query as sent.
    assert_eq!(echo.path, "/a%2Fb/c/d?x=%2F.&y=1&y=2");
    assert_eq!(echo.headers["x-set"], "set-value");
    assert_eq!(echo.headers["x-add"], "client,added");
    assert!(!echo.headers.contains_key("x-remove"));
    assert!(!echo.headers.contains_key("x-hop"), "headers named in Connection are hop-by-hop");
    assert_eq!(echo.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(echo.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn errors_say_why() {
    // A port nothing listens on: connections are refused.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let yaml = base_yaml(&["v1"])
        + &support::service_at("closed", &closed_port.to_string())
        + "---
apiVersion: v1
kind: Service
metadata: {name: no-endpoints, namespace: default}
spec: {ports: [{name: http, port: 80}]}
" + &route(
        "metadata: {name: errors, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /missing}}]
    backendRefs: [{name: does-not-exist, port: 80}]
  - matches: [{path: {type: Exact, value: /none}}]
  - matches: [{path: {type: Exact, value: /no-endpoints}}]
    backendRefs: [{name: no-endpoints, port: 80}]
  - matches: [{path: {type: Exact, value: /refused}}]
    backendRefs: [{name: closed, port: 80}]
  - matches: [{path: {type: Exact, value: /half}}]
    backendRefs: [{name: v1, port: 80}, {name: does-not-exist, port: 80}]
",
    );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    let cases = [
        ("/missing", 500, "invalid-backend", "Service default/does-not-exist not found"),
        ("/none", 500, "invalid-rule", "has no backendRefs"),
        ("/no-endpoints", 503, "no-ready-endpoints", "backend default/no-endpoints:80 has no ready endpoints"),
        ("/refused", 503, "upstream-connect-failed", "cannot connect to backend default/closed:80"),
        ("/nothing-here", 404, "no-route", "no route rule matches host e.example path /nothing-here"),
    ];
    for (path, status, reason, text) in cases {
        let reply = agimo.get(8080, "e.example", path).await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("x-agimo-reason"), Some(reason), "{path}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.contains(text), "{path}: {body}");
    }
    // Half the weight points at a missing Service: about half the requests get 500.
    let mut ok = 0;
    for _ in 0..200 {
        if agimo.get(8080, "e.example", "/half").await.status == 200 {
            ok += 1;
        }
    }
    assert!((60..=140).contains(&ok), "{ok} of 200 succeeded");
}

#[tokio::test]
async fn upstream_that_resets_gets_502() {
    // A backend that accepts and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let yaml = base_yaml(&[]) + &support::service_at("rude", &port.to_string()) + &support::route_to("rude", "rude");
    let agimo = Agimo::start(&yaml, &[]).await;
    let reply = agimo.get(8080, "r.example", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-agimo-reason"), Some("upstream-failed"));
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let yaml = base_yaml(&["v1"]) + &support::route_to("r", "v1");
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    let reply = client::send(agimo.addr(8080), Mode::H2c, client::get("h2.example", "/h2?x=1")).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    let echo = reply.echo();
    assert_eq!(echo.path, "/h2?x=1");
    // The :authority reaches an HTTP/1.1 backend as Host.
    assert_eq!(echo.host, "h2.example");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let yaml = base_yaml(&["ws"]) + &support::route_to("ws", "ws");
    let agimo = Agimo::start(&yaml, &["ws"]).await;
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let url = "ws://ws.example:8080/ws";
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.expect("websocket handshake");
    assert_eq!(response.status(), 101);
    let active = || support::metric(&agimo.dataplane.metrics().render(), "active_requests_total", "*");
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
        ws.send(Message::binary(vec![i as u8; 3])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![i as u8; 3]));
    }
    assert_eq!(active(), Some(1.0), "an open websocket is an active request");
    ws.close(None).await.unwrap();
    drop(ws);
    let mut waited = 0;
    while active() != Some(0.0) && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(active(), Some(0.0), "a closed websocket is no longer active");
}

#[tokio::test]
async fn streaming_responses_are_not_buffered() {
    use http_body_util::BodyExt;

    let yaml = base_yaml(&["sse"]) + &support::route_to("sse", "sse");
    let agimo = Agimo::start(&yaml, &["sse"]).await;
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = client::get("sse.example", "/stream?n=3&interval_ms=300");
    let started = std::time::Instant::now();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: sse 0\n\n");
    assert!(started.elapsed() < Duration::from_millis(250), "the first event arrived before the last was sent");
    let text = String::from_utf8_lossy(&first).into_owned()
        + &String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes());
    assert_eq!(text, "data: sse 0\n\ndata: sse 1\n\ndata: sse 2\n\n");
}

#[tokio::test]
async fn metrics_count_requests_per_matched_host() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: m, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [metrics.example, '*.wild.example']
  rules: [{backendRefs: [{name: v1, port: 80}]}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    for _ in 0..3 {
        assert_eq!(agimo.get(8080, "metrics.example", "/").await.status, 200);
    }
    assert_eq!(agimo.get(8080, "a.wild.example", "/").await.status, 200);
    assert_eq!(agimo.get(8080, "b.wild.example", "/").await.status, 200);
    assert_eq!(agimo.get(8080, "random-123.example", "/").await.status, 404);
    let text = agimo.dataplane.metrics().render();
    assert_eq!(support::metric(&text, "requests_total", "metrics.example"), Some(3.0));
    // A wildcard route is one label value, however many hosts it matches.
    assert_eq!(support::metric(&text, "requests_total", "*.wild.example"), Some(2.0));
    assert_eq!(support::metric(&text, "requests_total", "unmatched"), Some(1.0));
    assert_eq!(support::metric(&text, "requests_total", "random-123.example"), None);
    assert_eq!(support::metric(&text, "active_requests_total", "metrics.example"), Some(0.0));
    assert!(text.contains("request_duration_seconds_count{host=\"metrics.example\"} 3"), "{text}");
}

#[tokio::test]
async fn request_bodies_stream_to_the_backend_over_h1_and_h2() {
    let yaml = base_yaml(&["v1"]) + &support::route_to("r", "v1");
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    let body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    for mode in [Mode::Http1, Mode::H2c] {
        let mut req = client::get("body.example", "/upload");
        *req.method_mut() = http::Method::POST;
        *req.body_mut() = http_body_util::Full::new(body.clone());
        let reply = client::send(agimo.addr(8080), mode, req).await.unwrap();
        assert_eq!(reply.status, 200, "{mode:?}");
        let echo = reply.echo();
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.body_bytes, 1 << 20, "{mode:?}");
    }
}

#[tokio::test]
async fn a_request_without_host_is_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agimo = Agimo::start(&base_yaml(&[]), &[]).await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    // The highest version Agimo speaks, as nginx answers too (RFC 9112
    // section 2.3).
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("x-agimo-reason: missing-host"), "{text}");
    assert!(text.contains("connection: close"), "an HTTP/1.0 request without keep-alive: {text}");
}

#[tokio::test]
async fn filters_win_over_client_hop_by_hop_headers_and_set_host_on_any_protocol() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-tenant, value: fixed}, {name: host, value: rewritten.internal}]
    backendRefs: [{name: v1, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    for mode in [Mode::Http1, Mode::H2c] {
        let mut req = client::get("app.example", "/");
        if mode == Mode::Http1 {
            // A client cannot remove what the route sets by naming it in Connection.
            req.headers_mut().insert("connection", "x-tenant, host".parse().unwrap());
        }
        let echo = client::send(agimo.addr(8080), mode, req).await.unwrap().echo();
        assert_eq!(echo.headers.get("x-tenant").map(String::as_str), Some("fixed"), "{mode:?}");
        assert_eq!(echo.host, "rewritten.internal", "{mode:?}");
    }
}

#[tokio::test]
async fn http2_cookies_reach_an_http1_backend_as_one_header() {
    let agimo = Agimo::start(&(base_yaml(&["v1"]) + &support::route_to("r", "v1")), &["v1"]).await;
    let mut req = client::get("c.example", "/");
    req.headers_mut().append("cookie", "a=1".parse().unwrap());
    req.headers_mut().append("cookie", "b=2".parse().unwrap());
    let echo = client::send(agimo.addr(8080), Mode::H2c, req).await.unwrap().echo();
    assert_eq!(echo.headers["cookie"], "a=1; b=2");
}

#[tokio::test]
async fn ambiguous_or_tunnelling_requests_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agimo = Agimo::start(&(base_yaml(&["v1"]) + &support::route_to("r", "v1")), &["v1"]).await;
    let raw = |request: &'static [u8]| {
        let addr = agimo.addr(8080);
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut out = vec![0; 4096];
            let n = stream.read(&mut out).await.unwrap();
            String::from_utf8_lossy(&out[..n]).into_owned()
        }
    };
    let two_hosts = raw(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n").await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    assert!(two_hosts.contains("x-agimo-reason: duplicate-host"), "{two_hosts}");
    let connect = raw(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");

    // An h2c upgrade request is forwarded as a plain request, without the
    // upgrade, so no HTTP/2 tunnel can bypass routing.
    let mut req = client::get("u.example", "/");
    for (k, v) in
        [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")]
    {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let reply = client::send(agimo.addr(8080), Mode::Http1, req).await.unwrap();
    assert_eq!(reply.status, 200);
    let echo = reply.echo();
    assert!(!echo.headers.contains_key("upgrade"), "{:?}", echo.headers);
    assert!(!echo.headers.contains_key("http2-settings"), "{:?}", echo.headers);
}

#[tokio::test]
async fn url_rewrite_and_response_headers() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: inside.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Set, value: set}]
        add: [{name: X-Added, value: added}]
        remove: [Content-Type]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: Exact, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: v1, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    let reply = agimo.get(8080, "outside.example", "/old/page?q=1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-set"), Some("set"));
    assert_eq!(reply.header("x-added"), Some("added"));
    assert_eq!(reply.header("content-type"), None);
    let echo = reply.echo();
    assert_eq!(echo.path, "/new/page?q=1");
    assert_eq!(echo.host, "inside.example");
    assert_eq!(agimo.get(8080, "outside.example", "/full?x=y").await.echo().path, "/replaced?x=y");
}

#[tokio::test]
async fn timeouts_answer_504() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /request}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backend}}]
    timeouts: {backendRequest: 300ms}
    backendRefs: [{name: v1, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    for path in ["/request", "/backend"] {
        let started = std::time::Instant::now();
        let slow = agimo.get(8080, "t.example", &format!("{path}?delay_ms=2000")).await;
        assert_eq!(slow.status, 504, "{path}");
        assert_eq!(slow.header("x-agimo-reason"), Some("timeout"));
        assert!(started.elapsed() < Duration::from_millis(1500), "{path}: {:?}", started.elapsed());
        assert_eq!(agimo.get(8080, "t.example", &format!("{path}?delay_ms=10")).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn h2c_backends_and_backend_filters() {
    let yaml = base_yaml(&["v1"])
        + "---
apiVersion: v1
kind: Service
metadata: {name: grpcish, namespace: default}
spec: {ports: [{name: h2c, port: 80, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: grpcish, namespace: default, labels: {kubernetes.io/service-name: grpcish}}
addressType: IPv4
ports: [{name: h2c, port: {{port:v1}}}]
endpoints: [{addresses: [127.0.0.1]}]
" + &route(
        "metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - name: grpcish
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: X-Backend, value: h2c}]}
",
    );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    // An HTTP/1.1 client reaches an h2c backend over HTTP/2, Host as :authority.
    let echo = agimo.get(8080, "h2.example:8080", "/over?h2c=1").await.echo();
    assert_eq!(echo.proto, "HTTP/2.0");
    assert_eq!(echo.host, "h2.example:8080");
    assert_eq!(echo.path, "/over?h2c=1");
    assert_eq!(echo.headers["x-backend"], "h2c");
}

#[tokio::test]
async fn a_listener_set_adds_listeners_that_serve_only_its_routes() {
    let yaml = support::gateway_yaml(
        "  - {name: http, port: 8080, protocol: HTTP}
  allowedListeners: {namespaces: {from: Same}}
",
    ) + "---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: extra, namespace: default}
spec:
  parentRef: {name: gw}
  listeners:
  - {name: named, port: 8080, protocol: HTTP, hostname: ls.example}
  - {name: other-port, port: 8081, protocol: HTTP}
" + &support::service_yaml("own")
        + &support::service_yaml("from-set")
        + &route(
            "metadata: {name: on-gateway, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /gw}}], backendRefs: [{name: own, port: 80}]}]
",
        )
        + &route(
            "metadata: {name: on-set, namespace: default}
spec:
  parentRefs: [{kind: ListenerSet, name: extra}]
  rules: [{matches: [{path: {type: PathPrefix, value: /ls}}], backendRefs: [{name: from-set, port: 80}]}]
",
        );
    let agimo = Agimo::start(&yaml, &["own", "from-set"]).await;
    // The ListenerSet's listener on the Gateway's port takes its hostname,
    // and serves the ListenerSet's routes only.
    assert_eq!(agimo.get(8080, "ls.example", "/ls").await.echo().backend, "from-set");
    let reply = agimo.get(8080, "ls.example", "/gw").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-agimo-reason"), Some("no-route"));
    // The Gateway's own listener keeps the other hostnames and its routes.
    assert_eq!(agimo.get(8080, "else.example", "/gw").await.echo().backend, "own");
    assert_eq!(agimo.get(8080, "else.example", "/ls").await.status, 404);
    // A port only the ListenerSet has is listened on.
    assert_eq!(agimo.get(8081, "any.example", "/ls").await.echo().backend, "from-set");
    assert_eq!(agimo.get(8081, "any.example", "/gw").await.status, 404);
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_gateway_and_responses_get_cors_headers() {
    let yaml = base_yaml(&["v1"])
        + &route(
            "metadata: {name: cors, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /listed}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ['https://www.foo.com', 'https://*.bar.com']
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1, x-header-2]
        exposeHeaders: [x-header-3]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /any}}]
    filters:
    - type: CORS
      cors: {allowOrigins: ['*'], allowMethods: ['*'], allowHeaders: ['*'], allowCredentials: true}
    backendRefs: [{name: v1, port: 80}]
",
        );
    let agimo = Agimo::start(&yaml, &["v1"]).await;
    let send = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut req = http::Request::builder().method(method).uri(path).header("host", "cors.example");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        client::send(agimo.addr(8080), Mode::Http1, req.body(Default::default()).unwrap())
    };

    // A preflight from an origin the wildcard admits (any labels left of `*`).
    let preflight = [
        ("origin", "https://a.www.bar.com"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "x-header-1"),
    ];
    let reply = send("OPTIONS", "/listed", &preflight).await.unwrap();
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty(), "the gateway answers, not the backend: {:?}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), Some("https://a.www.bar.com"));
    assert_eq!(reply.header("access-control-allow-methods"), Some("GET, OPTIONS"));
    assert_eq!(reply.header("access-control-allow-headers"), Some("x-header-1, x-header-2"));
    assert_eq!(reply.header("access-control-expose-headers"), Some("x-header-3"));
    assert_eq!(reply.header("access-control-max-age"), Some("3600"));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));

    // An origin not listed: a 204 without CORS headers.
    let reply = send("OPTIONS", "/listed", &[("origin", "https://bar.com"), ("access-control-request-method", "GET")])
        .await
        .unwrap();
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), None);

    // Actual requests reach the backend; an allowed origin gets the headers.
    let reply = send("GET", "/listed", &[("origin", "https://www.foo.com")]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().backend, "v1");
    assert_eq!(reply.header("access-control-allow-origin"), Some("https://www.foo.com"));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    let reply = send("GET", "/listed", &[("origin", "https://foobar.com")]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    // An OPTIONS that is not a preflight is forwarded.
    let reply = send("OPTIONS", "/listed", &[("origin", "https://www.foo.com")]).await.unwrap();
    assert_eq!(reply.echo().method, "OPTIONS");

    // Wildcards with credentials: never `*`, the request is echoed.
    let reply = send(
        "OPTIONS",
        "/any",
        &[
            ("origin", "https://other.foo.com:8443"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a, x-b"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), Some("https://other.foo.com:8443"));
    assert_eq!(reply.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(reply.header("access-control-allow-headers"), Some("x-a, x-b"));
    assert_eq!(reply.header("access-control-max-age"), Some("5"), "the CRD's default maxAge");
}
