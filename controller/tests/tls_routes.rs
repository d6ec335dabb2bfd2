//! TLSRoutes. On a TLS listener in mode Passthrough the client's handshake
//! is with the backend (its certificate, the client's SNI), Agimo only reads
//! the ClientHello; in mode Terminate the listener's certificate answers and
//! the backend gets the plaintext stream; both modes on one port, chosen by
//! SNI. A connection nothing serves is closed without an alert; statuses; a
//! connection for a workload at zero is held and released.

mod support;

use std::time::{Duration, Instant};

use agimo_shared::snapshot::ObjectRef;
use agimo_testkit::client::{self, Mode};
use agimo_testkit::tls::TestCa;
use agimo_testkit::tls_backend::{self, TlsBackend};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{Agimo, gateway_yaml, metric, tls_secret};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LISTENERS: &str =
    "  - {name: tls, port: 8443, protocol: TLS, hostname: '*.example.com', tls: {mode: Passthrough}}
  - {name: terminate, port: 9443, protocol: TLS, tls: {mode: Terminate, certificateRefs: [{name: none}]}}
";

/// A Service `<name>` whose one endpoint is the TLS backend, or none.
fn service(name: &str, backend: Option<&TlsBackend>) -> String {
    service_at(name, backend.map(|b| b.addr))
}

/// A Service `<name>` (port 443) whose one endpoint is `endpoint`, or none.
fn service_at(name: &str, endpoint: Option<std::net::SocketAddr>) -> String {
    let (port, endpoints) = match endpoint {
        Some(addr) => (addr.port(), "[{addresses: [127.0.0.1]}]"),
        None => (1, "[]"),
    };
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: tls, port: {port}}}]
endpoints: {endpoints}
"
    )
}

fn tls_route(name: &str, hostname: &str, backend: &str, annotations: &str) -> String {
    tls_route_on("sectionName: tls", name, hostname, backend, annotations)
}

/// A TLSRoute whose parentRef to `gw` has `parent` (its sectionName, or
/// nothing).
fn tls_route_on(parent: &str, name: &str, hostname: &str, backend: &str, annotations: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}
spec:
  parentRefs: [{{name: gw, {parent}}}]
  hostnames: [{hostname}]
  rules: [{{backendRefs: [{{name: {backend}, port: 443}}]}}]
"
    )
}

fn root(ca: &TestCa) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()]
}

/// A GET over TLS through Agimo's passthrough socket, verified against the
/// backend's CA: what the backend saw.
async fn get_through(agimo: &Agimo, sni: &str, ca: &TestCa) -> std::io::Result<String> {
    let (stream, _) = client::tls_connect(agimo.addr(8443), sni, &root(ca), &[]).await?;
    let reply = client::send_on(stream, Mode::Http1, client::get(sni, "/through")).await?;
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

#[tokio::test]
async fn the_handshake_is_the_backends_and_agimo_only_routes_by_sni() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let yaml = gateway_yaml(LISTENERS)
        + &service("tls-backend", Some(&backend))
        + &tls_route("abc", "abc.example.com", "tls-backend", "")
        + &tls_route("elsewhere", "abc.other.org", "tls-backend", "")
        + &tls_route("missing", "missing.example.com", "nothing-here", "");
    let agimo = Agimo::start(&yaml, &[]).await;
    let statuses = agimo.apply(&yaml).await;
    let parent = |name: &str, t: &str| {
        let route = &statuses.tls_routes[&ObjectRef { namespace: "default".into(), name: name.into() }][0];
        let c = route.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(parent("abc", "Accepted"), ("True".into(), "Accepted".into()));
    assert_eq!(parent("elsewhere", "Accepted"), ("False".into(), "NoMatchingListenerHostname".into()));
    assert_eq!(parent("missing", "ResolvedRefs"), ("False".into(), "BackendNotFound".into()));
    let gateway = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    let listeners = gateway.listeners.as_ref().unwrap();
    let kinds: Vec<&str> = listeners[0].supported_kinds.iter().flatten().map(|k| k.kind.as_str()).collect();
    assert_eq!(kinds, vec!["TLSRoute"]);
    // A listener in mode Terminate without a usable certificate is not
    // served, and says why.
    let terminate = listeners[1].conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    assert_eq!((terminate.status.as_str(), terminate.reason.as_str()), ("False", "InvalidCertificateRef"));

    // The client verifies the backend's own certificate, and the backend
    // saw the client's SNI: the TLS session is between them.
    let seen = get_through(&agimo, "abc.example.com", &ca).await.expect("through the passthrough listener");
    assert!(seen.contains("sni=abc.example.com\n"), "{seen}");
    assert!(seen.contains("path=/through\n"), "{seen}");

    // Nothing serves these: closed without a TLS alert, before any byte.
    for sni in ["nobody.example.com", "missing.example.com"] {
        let mut stream = tokio::net::TcpStream::connect(agimo.addr(8443)).await.unwrap();
        let hello = client_hello(sni);
        stream.write_all(&hello).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{sni}: {read:?}");
        assert!(answer.is_empty(), "{sni}: no alert, no byte: {answer:?}");
    }
    assert_eq!(metric(&agimo.dataplane.metrics().render(), "requests_total", "abc.example.com"), Some(1.0));
}

/// A ClientHello for `sni`, as a rustls client sends it.
fn client_hello(sni: &str) -> Vec<u8> {
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test]
async fn a_connection_for_a_workload_at_zero_is_held_then_released() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let gated = "agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 30s";
    let at_zero = gateway_yaml(LISTENERS)
        + &service("tls-backend", None)
        + &tls_route("abc", "abc.example.com", "tls-backend", gated);
    let scaled_up = at_zero.replace(&service("tls-backend", None), &service("tls-backend", Some(&backend)));
    let agimo = std::sync::Arc::new(Agimo::start(&at_zero, &[]).await);
    let ca_pem = ca.cert_pem.clone();
    let addr = agimo.addr(8443);
    let held = tokio::spawn(async move {
        let roots = vec![CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()];
        let (stream, _) = client::tls_connect(addr, "abc.example.com", &roots, &[]).await?;
        client::send_on(stream, Mode::Http1, client::get("abc.example.com", "/held")).await
    });
    let pending = || metric(&agimo.dataplane.metrics().render(), "pending_requests_total", "abc.example.com");
    let started = Instant::now();
    while pending() != Some(1.0) {
        assert!(started.elapsed() < Duration::from_secs(5), "not held: {:?}", pending());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished(), "the handshake waits for a ready endpoint");
    agimo.apply(&scaled_up).await;
    let reply = held.await.unwrap().expect("released to the backend");
    assert!(String::from_utf8_lossy(&reply.body).contains("sni=abc.example.com\n"));
    assert_eq!(pending(), Some(0.0));
}

/// A plain TCP backend that speaks first, as the conformance suite's
/// `tcp-backend` does: a welcome line on connect, then every line echoed.
async fn speak_first_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                write.write_all(b"welcome from the plain backend\n").await?;
                let mut lines = BufReader::new(read).lines();
                while let Some(line) = lines.next_line().await? {
                    write.write_all(format!("echo {line}\n").as_bytes()).await?;
                }
                std::io::Result::Ok(())
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_terminating_listener_shares_its_port_with_a_passthrough_one_by_sni() {
    let gateway_ca = TestCa::new("gateway CA");
    let backend_ca = TestCa::new("backend CA");
    let tls_backend = tls_backend::spawn(&backend_ca.issue(&["abc.example.com"], &[]), None).await;
    let plain_backend = speak_first_backend().await;
    let listeners = "  - {name: pass, port: 8443, protocol: TLS, hostname: abc.example.com, tls: {mode: Passthrough}}
  - {name: term, port: 8443, protocol: TLS, hostname: tls.example.com, tls: {certificateRefs: [{name: gw-cert}]}}
";
    // Neither route names a listener: each attaches where its hostname fits.
    let yaml = gateway_yaml(listeners)
        + &tls_secret("gw-cert", &gateway_ca.issue(&["tls.example.com"], &[]))
        + &service("tls-backend", Some(&tls_backend))
        + &service_at("plain-backend", Some(plain_backend))
        + &tls_route_on("", "passed", "abc.example.com", "tls-backend", "")
        + &tls_route_on("", "terminated", "tls.example.com", "plain-backend", "");
    let agimo = Agimo::start(&yaml, &[]).await;
    let statuses = agimo.apply(&yaml).await;
    let gateway = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    for listener in gateway.listeners.as_ref().unwrap() {
        let accepted = listener.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert_eq!(accepted.status, "True", "{}: {}", listener.name, accepted.message);
        let kinds: Vec<&str> = listener.supported_kinds.iter().flatten().map(|k| k.kind.as_str()).collect();
        assert_eq!(kinds, vec!["TLSRoute"], "{}", listener.name);
        assert_eq!(listener.attached_routes, 1, "{}", listener.name);
    }

    // Terminated with the listener's certificate, no ALPN offered or taken;
    // the backend's welcome arrives before the client has sent a byte.
    let roots = root(&gateway_ca);
    let (stream, alpn) = client::tls_connect(agimo.addr(8443), "tls.example.com", &roots, &[]).await.unwrap();
    assert_eq!(alpn, None);
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let welcome =
        tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.expect("the backend spoke first");
    assert_eq!(welcome.unwrap().as_deref(), Some("welcome from the plain backend"));
    write.write_all(b"PING\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("echo PING"), "plaintext both ways");

    // The other SNI on the same port is passed through: the client's
    // handshake is with the TLS backend.
    let seen = get_through(&agimo, "abc.example.com", &backend_ca).await.expect("passed through on the shared port");
    assert!(seen.contains("sni=abc.example.com\n"), "{seen}");
    // The gateway's certificate is not the backend's: a client trusting only
    // the backend's CA cannot complete a handshake for the terminated name.
    let wrong = client::tls_connect(agimo.addr(8443), "tls.example.com", &root(&backend_ca), &[]).await;
    assert!(wrong.is_err(), "the terminating listener answered with its own certificate");
    assert_eq!(metric(&agimo.dataplane.metrics().render(), "requests_total", "tls.example.com"), Some(2.0));
}
