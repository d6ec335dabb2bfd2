//! TLS to backends (BackendTLSPolicy): the policy's CA and hostname (SNI)
//! verify the backend, subjectAltNames replace the hostname for
//! verification, the Gateway's backend client certificate is presented, and
//! a policy that cannot be used fails its backend's requests clearly while
//! other routes keep serving.

mod support;

use agimo_controller::Statuses;
use agimo_shared::snapshot::ObjectRef;
use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::objects::HttpRoute;
use agimo_testkit::tls::{TestCa, TestCert};
use agimo_testkit::tls_backend::{self, TlsBackend};
use http::Method;
use support::{Agimo, ca_config_map};

const HOST: &str = "app.example.com";

/// A Service `<name>` (port 80, port name `btls`) whose one endpoint is
/// the TLS backend at `backend`.
fn tls_service(name: &str, backend: &TlsBackend) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: btls, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: btls, port: {}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
",
        backend.addr.port()
    )
}

/// A BackendTLSPolicy `<name>` for Service `service`, trusting ConfigMap
/// `ca`, with this hostname and extra validation (YAML under `validation`).
fn policy(name: &str, service: &str, ca: &str, hostname: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: {service}}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: {ca}}}]
    hostname: {hostname}
{extra}"
    )
}

/// The Gateway, a route per path to a Service of the same name, and the
/// plain echo backend `plain` at `/plain`.
fn base(paths: &[&str]) -> String {
    let mut yaml = support::base_yaml(&["plain"]);
    yaml += &HttpRoute::new("plain").hostname(HOST).path_prefix("/plain").backend("plain").yaml();
    for path in paths {
        yaml += &HttpRoute::new(path).hostname(HOST).path_prefix(&format!("/{path}")).backend(path).yaml();
    }
    yaml
}

async fn get(agimo: &Agimo, path: &str) -> Reply {
    agimo.get(8080, HOST, path).await
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The (type, status, reason) of each condition of the policy's ancestor
/// entry for Gateway default/gw.
fn policy_conditions(statuses: &Statuses, name: &str) -> Vec<(String, String, String)> {
    let key = ObjectRef { namespace: "default".into(), name: name.into() };
    let ancestors = statuses.backend_tls_policies.get(&key).unwrap_or_else(|| panic!("no status for {name}"));
    let ours = ancestors.iter().find(|a| a.ancestor_ref.name == "gw").unwrap_or_else(|| panic!("{name}: no gw"));
    assert_eq!(ours.controller_name, "agimo.dev/gateway-controller");
    ours.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
}

fn cond(type_: &str, status: &str, reason: &str) -> (String, String, String) {
    (type_.into(), status.into(), reason.into())
}

#[tokio::test]
async fn a_tls_backend_is_reached_with_the_policys_ca_and_hostname_as_sni() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let yaml = base(&["secure"])
        + &tls_service("secure", &backend)
        + &ca_config_map("ca", &ca)
        + &policy("secure", "secure", "ca", "abc.example.com", "");
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    let statuses = agimo.apply(&yaml).await;
    assert_eq!(
        policy_conditions(&statuses, "secure"),
        vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]
    );
    for _ in 0..3 {
        let reply = get(&agimo, "/secure/a").await;
        assert_eq!(reply.status, 200, "{}", text(&reply));
        let seen = text(&reply);
        assert!(seen.contains("sni=abc.example.com\n"), "{seen}");
        assert!(seen.contains("alpn=http/1.1\n"), "{seen}");
        assert!(seen.contains("path=/secure/a\n"), "{seen}");
        assert!(seen.contains("client-cert=false\n"), "{seen}");
    }
    // A request with a body goes the same way.
    let post = http::Request::builder()
        .method(Method::POST)
        .uri("/secure/b")
        .header(http::header::HOST, HOST)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    let reply = client::send(agimo.addr(8080), Mode::Http1, post).await.unwrap();
    assert_eq!(reply.status, 200, "{}", text(&reply));
    assert!(text(&reply).contains("path=/secure/b\n"));
}

#[tokio::test]
async fn a_backend_whose_certificate_another_ca_signed_is_refused_with_502() {
    let ca = TestCa::new("backend CA");
    let other = TestCa::new("some other CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let yaml = base(&["secure"])
        + &tls_service("secure", &backend)
        + &ca_config_map("other", &other)
        + &policy("secure", "secure", "other", "abc.example.com", "");
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    let reply = get(&agimo, "/secure").await;
    assert_eq!(reply.status, 502, "{}", text(&reply));
    assert_eq!(reply.headers["x-agimo-reason"], "upstream-tls-failed");
    let body = text(&reply);
    assert!(body.contains("SNI abc.example.com") && body.contains("BackendTLSPolicy default/secure"), "{body}");
    // A hostname the certificate does not hold is refused the same way.
    let yaml = base(&["secure"])
        + &tls_service("secure", &backend)
        + &ca_config_map("ca", &ca)
        + &policy("secure", "secure", "ca", "mismatch.example.com", "");
    agimo.apply(&yaml).await;
    let reply = get(&agimo, "/secure").await;
    assert_eq!(reply.status, 502, "{}", text(&reply));
    assert_eq!(reply.headers["x-agimo-reason"], "upstream-tls-failed");
    assert_eq!(get(&agimo, "/plain").await.status, 200);
}

#[tokio::test]
async fn subject_alt_names_replace_the_hostname_for_verification() {
    let ca = TestCa::new("backend CA");
    let cert: TestCert = ca.issue(&["abc.example.com"], &["spiffe://abc.example.com/test-identity"]);
    let backend = tls_backend::spawn(&cert, None).await;
    let san = |yaml: &str| format!("    subjectAltNames:\n{yaml}");
    let cases = [
        ("dns", san("    - {type: Hostname, hostname: abc.example.com}\n"), 200),
        ("dnsmismatch", san("    - {type: Hostname, hostname: dce.example.com}\n"), 502),
        ("uri", san("    - {type: URI, uri: 'spiffe://abc.example.com/test-identity'}\n"), 200),
        ("urimismatch", san("    - {type: URI, uri: 'spiffe://abc.example.com/other'}\n"), 502),
        (
            "multi",
            san(
                "    - {type: Hostname, hostname: nope.example.com}\n    - {type: URI, uri: 'spiffe://abc.example.com/test-identity'}\n",
            ),
            200,
        ),
    ];
    let mut yaml = base(&cases.iter().map(|c| c.0).collect::<Vec<_>>()) + &ca_config_map("ca", &ca);
    for (name, extra, _) in &cases {
        // The hostname is the SNI only: a name the certificate lacks.
        yaml += &tls_service(name, &backend);
        yaml += &policy(name, name, "ca", "sni-only.example.com", extra);
    }
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    for (name, _, want) in cases {
        let reply = get(&agimo, &format!("/{name}")).await;
        assert_eq!(reply.status, want, "{name}: {}", text(&reply));
        if want == 200 {
            assert!(text(&reply).contains("sni=sni-only.example.com\n"), "{name}: {}", text(&reply));
        } else {
            assert_eq!(reply.headers["x-agimo-reason"], "upstream-tls-failed", "{name}");
        }
    }
}

#[tokio::test]
async fn the_gateways_client_certificate_is_presented_to_tls_backends() {
    let ca = TestCa::new("backend CA");
    let client_ca = TestCa::new("client CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), Some(&client_ca.der)).await;
    let gateway = support::base_yaml(&["plain"]).replace(
        "  gatewayClassName: agimo\n",
        "  gatewayClassName: agimo\n  tls: {backend: {clientCertificateRef: {group: '', kind: Secret, name: client}}}\n",
    );
    let yaml = gateway
        + &HttpRoute::new("secure").hostname(HOST).backend("secure").yaml()
        + &tls_service("secure", &backend)
        + &ca_config_map("ca", &ca)
        + &policy("secure", "secure", "ca", "abc.example.com", "")
        + &support::tls_secret("client", &client_ca.issue(&["agimo.example"], &[]));
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    let statuses = agimo.apply(&yaml).await;
    let gw = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    let resolved = gw.conditions.iter().flatten().find(|c| c.type_ == "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((resolved.status.as_str(), resolved.reason.as_str()), ("True", "ResolvedRefs"));
    let reply = get(&agimo, "/").await;
    assert_eq!(reply.status, 200, "{}", text(&reply));
    assert!(text(&reply).contains("client-cert=true\n"), "{}", text(&reply));

    // Without it, the backend refuses the handshake.
    let without =
        yaml.replace("  tls: {backend: {clientCertificateRef: {group: '', kind: Secret, name: client}}}\n", "");
    agimo.apply(&without).await;
    assert_eq!(get(&agimo, "/").await.status, 502);

    // A reference to a Secret that does not exist: ResolvedRefs False.
    let missing = yaml.replace("name: client}}}", "name: nowhere}}}");
    let statuses = agimo.apply(&missing).await;
    let gw = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    let resolved = gw.conditions.iter().flatten().find(|c| c.type_ == "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((resolved.status.as_str(), resolved.reason.as_str()), ("False", "InvalidClientCertificateRef"));
    assert!(resolved.message.contains("default/nowhere"), "{}", resolved.message);
}

#[tokio::test]
async fn a_policy_whose_ca_config_map_is_missing_fails_its_backend_and_nothing_else() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let yaml = base(&["secure"])
        + &tls_service("secure", &backend)
        + &policy("secure", "secure", "missing", "abc.example.com", "");
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    let statuses = agimo.apply(&yaml).await;
    assert_eq!(
        policy_conditions(&statuses, "secure"),
        vec![
            cond("Accepted", "False", "NoValidCACertificate"),
            cond("ResolvedRefs", "False", "InvalidCACertificateRef")
        ]
    );
    let reply = get(&agimo, "/secure").await;
    assert_eq!(reply.status, 500, "{}", text(&reply));
    assert_eq!(reply.headers["x-agimo-reason"], "invalid-backend");
    assert!(text(&reply).contains("ConfigMap default/missing: not found"), "{}", text(&reply));
    assert_eq!(get(&agimo, "/plain").await.status, 200);

    // The ConfigMap appears: the policy is accepted and the backend served.
    let fixed = yaml + &ca_config_map("missing", &ca);
    let statuses = agimo.apply(&fixed).await;
    assert_eq!(
        policy_conditions(&statuses, "secure"),
        vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]
    );
    assert_eq!(get(&agimo, "/secure").await.status, 200);
}

#[tokio::test]
async fn of_two_policies_for_one_service_port_the_oldest_wins_and_the_other_is_conflicted() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let yaml = base(&["secure"])
        + &tls_service("secure", &backend)
        + &ca_config_map("ca", &ca)
        + &policy("a-first", "secure", "ca", "abc.example.com", "")
        + &policy("b-second", "secure", "ca", "wrong.example.com", "");
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    let statuses = agimo.apply(&yaml).await;
    assert_eq!(policy_conditions(&statuses, "a-first")[0], cond("Accepted", "True", "Accepted"));
    assert_eq!(policy_conditions(&statuses, "b-second")[0], cond("Accepted", "False", "Conflicted"));
    assert_eq!(get(&agimo, "/secure").await.status, 200);
}

#[tokio::test]
async fn an_h2c_service_port_with_a_policy_gets_http2_over_tls_by_alpn() {
    let ca = TestCa::new("backend CA");
    let backend = tls_backend::spawn(&ca.issue(&["abc.example.com"], &[]), None).await;
    let service = tls_service("secure", &backend)
        .replace("{name: btls, port: 80}", "{name: btls, port: 80, appProtocol: kubernetes.io/h2c}");
    let yaml = base(&["secure"])
        + &service
        + &ca_config_map("ca", &ca)
        + &policy("secure", "secure", "ca", "abc.example.com", "");
    let agimo = Agimo::start(&yaml, &["plain"]).await;
    for _ in 0..2 {
        let reply = get(&agimo, "/secure").await;
        assert_eq!(reply.status, 200, "{}", text(&reply));
        let seen = text(&reply);
        assert!(seen.contains("alpn=h2\n") && seen.contains("version=HTTP/2.0\n"), "{seen}");
    }
}
