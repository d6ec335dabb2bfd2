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
