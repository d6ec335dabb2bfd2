//! TLS termination: certificates by SNI with exact and wildcard listener
//! hostnames, a default for clients without SNI, ALPN h2 and http/1.1.

mod support;

use agimo_testkit::client::{self, Mode};
use agimo_testkit::tls::{TestCert, self_signed};
use support::Agimo;

struct Certs {
    wildcard: TestCert,
    exact: TestCert,
    fallback: TestCert,
}

fn yaml(certs: &Certs) -> String {
    support::gateway_yaml(
        "  - name: wildcard
    port: 8443
    protocol: HTTPS
    hostname: '*.example.com'
    tls: {certificateRefs: [{name: wildcard}]}
  - name: exact
    port: 8443
    protocol: HTTPS
    hostname: exact.example.com
    tls: {certificateRefs: [{name: exact}]}
  - name: fallback
    port: 8443
    protocol: HTTPS
    tls: {certificateRefs: [{name: fallback}]}
",
    ) + &support::route_to("all", "v1")
        + &support::service_yaml("v1")
        + &support::tls_secret("wildcard", &certs.wildcard)
        + &support::tls_secret("exact", &certs.exact)
        + &support::tls_secret("fallback", &certs.fallback)
}

fn certs() -> Certs {
    Certs {
        wildcard: self_signed(&["*.example.com", "*.b.example.com"]),
        exact: self_signed(&["exact.example.com"]),
        fallback: self_signed(&["fallback.test"]),
    }
}

#[tokio::test]
async fn certificates_are_chosen_by_sni() {
    let certs = certs();
    let agimo = Agimo::start(&yaml(&certs), &["v1"]).await;
    let addr = agimo.addr(8443);
    // Each handshake trusts only the certificate it expects, so a wrong choice
    // fails verification.
    let cases = [
        ("foo.example.com", &certs.wildcard),
        ("a.b.example.com", &certs.wildcard),
        ("exact.example.com", &certs.exact),
        ("fallback.test", &certs.fallback),
    ];
    for (sni, cert) in cases {
        let (stream, _) = client::tls_connect(addr, sni, std::slice::from_ref(&cert.der), &[b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let reply = client::send_on(stream, Mode::Http1, client::get(sni, "/tls")).await.unwrap();
        assert_eq!(reply.status, 200, "{sni}");
        let echo = reply.echo();
        assert_eq!(echo.headers["x-forwarded-proto"], "https");
        assert_eq!(echo.host, sni);
    }
    // The wildcard certificate is not offered for a name it does not cover.
    assert!(
        client::tls_connect(addr, "exact.example.com", std::slice::from_ref(&certs.wildcard.der), &[]).await.is_err(),
        "exact.example.com must get its own certificate"
    );
}

#[tokio::test]
async fn alpn_negotiates_http2_or_http1() {
    let certs = certs();
    let agimo = Agimo::start(&yaml(&certs), &["v1"]).await;
    let roots = [certs.wildcard.der.clone()];
    let (stream, alpn) =
        client::tls_connect(agimo.addr(8443), "h2.example.com", &roots, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let reply = client::send_on(stream, Mode::H2c, client::get("h2.example.com", "/over-h2")).await.unwrap();
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path, "/over-h2");

    let (stream, alpn) = client::tls_connect(agimo.addr(8443), "h1.example.com", &roots, &[b"http/1.1"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let reply = client::send_on(stream, Mode::Http1, client::get("h1.example.com", "/over-h1")).await.unwrap();
    assert_eq!(reply.version, http::Version::HTTP_11);
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn clients_without_sni_get_the_listener_without_hostname() {
    let certs = certs();
    let agimo = Agimo::start(&yaml(&certs), &["v1"]).await;
    let (stream, _) =
        client::tls_connect_without_sni(agimo.addr(8443), "fallback.test", std::slice::from_ref(&certs.fallback.der))
            .await
            .expect("the fallback certificate is served without SNI");
    let reply = client::send_on(stream, Mode::Http1, client::get("fallback.test", "/")).await.unwrap();
    assert_eq!(reply.status, 200);
    // An SNI no listener claims also gets the fallback certificate, so the
    // client completes the handshake and sees a 404 it can read, not a TLS alert.
    let (stream, _) =
        client::tls_connect(agimo.addr(8443), "fallback.test", std::slice::from_ref(&certs.fallback.der), &[])
            .await
            .unwrap();
    let reply = client::send_on(stream, Mode::Http1, client::get("unknown.test", "/")).await.unwrap();
    assert_eq!(reply.status, 200, "the listener without hostname serves every host");
}

/// The conformance suite's layout: one certificate for every listener on
/// the port, listeners without hostname, exact, wildcard, and an exact one
/// inside the wildcard.
#[tokio::test]
async fn a_host_of_another_listener_than_the_sni_chose_is_misdirected() {
    let cert = self_signed(&["example.org", "second-example.org", "*.wildcard.org", "unknown-example.org"]);
    let yaml = support::gateway_yaml(
        "  - {name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
  - {name: second, port: 8443, protocol: HTTPS, hostname: second-example.org, tls: {certificateRefs: [{name: cert}]}}
  - {name: wildcard, port: 8443, protocol: HTTPS, hostname: '*.wildcard.org', tls: {certificateRefs: [{name: cert}]}}
  - {name: fourth, port: 8443, protocol: HTTPS, hostname: fourth-example.wildcard.org, tls: {certificateRefs: [{name: cert}]}}
",
    ) + &support::route_for_host("first", "example.org", "v1")
        + "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rest, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: second}, {name: gw, sectionName: wildcard}, {name: gw, sectionName: fourth}]
  rules: [{backendRefs: [{name: v2, port: 80}]}]
"
        + &support::service_yaml("v1")
        + &support::service_yaml("v2")
        + &support::tls_secret("cert", &cert);
    let agimo = Agimo::start(&yaml, &["v1", "v2"]).await;
    let cases = [
        ("example.org", "example.org", 200),
        ("example.org", "second-example.org", 421),
        // Same listener (the one without hostname), no route: 404.
        ("example.org", "unknown-example.org", 404),
        ("second-example.org", "second-example.org", 200),
        ("second-example.org", "example.org", 421),
        ("second-example.org", "unknown-example.org", 421),
        ("third.wildcard.org", "fifth.wildcard.org", 200),
        ("third.wildcard.org", "fourth-example.wildcard.org", 421),
        ("fourth-example.wildcard.org", "fifth.wildcard.org", 421),
        ("unknown-example.org", "example.org", 200),
    ];
    for (sni, host, status) in cases {
        for (alpn, mode) in [(&b"h2"[..], Mode::H2c), (&b"http/1.1"[..], Mode::Http1)] {
            let (stream, _) = client::tls_connect(agimo.addr(8443), sni, std::slice::from_ref(&cert.der), &[alpn])
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            let reply = client::send_on(stream, mode, client::get(host, "/")).await.unwrap();
            assert_eq!(reply.status, status, "SNI {sni}, host {host}, {mode:?}");
            if status == 421 {
                assert_eq!(reply.header("x-agimo-reason"), Some("misdirected-request"));
            }
        }
    }
    // Without SNI (a client connecting by address), the Host alone decides.
    let (stream, _) =
        client::tls_connect_without_sni(agimo.addr(8443), "second-example.org", std::slice::from_ref(&cert.der))
            .await
            .unwrap();
    let reply = client::send_on(stream, Mode::Http1, client::get("second-example.org", "/")).await.unwrap();
    assert_eq!(reply.status, 200);
}
