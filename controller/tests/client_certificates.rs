//! Client certificate validation (a Gateway's `tls.frontend`): HTTPS
//! listeners ask for a client certificate and check it against the CA
//! certificates of a ConfigMap, by port; `AllowInsecureFallback` lets
//! clients without a valid one through.

mod support;

use agimo_controller::Statuses;
use agimo_shared::snapshot::ObjectRef;
use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::tls::{TestCa, TestCert, self_signed};
use support::{Agimo, ca_config_map};

struct Pki {
    server: TestCert,
    /// The CA of the default validation (port 8443).
    ca: TestCa,
    /// The CA of port 8444's validation.
    other_ca: TestCa,
}

fn pki() -> Pki {
    Pki { server: self_signed(&["*.example.com"]), ca: TestCa::new("default CA"), other_ca: TestCa::new("port CA") }
}

/// A Gateway with HTTPS listeners on 8443 and 8444 (and `extra` listener
/// items), validating client certificates against ConfigMap `default-ca` by
/// default and against `port-ca` on 8444 in `port_mode`.
fn yaml(pki: &Pki, port_mode: &str, extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: agimo}}
spec: {{controllerName: agimo.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: agimo
  addresses: [{{type: IPAddress, value: '{{{{ip}}}}'}}]
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{{group: '', kind: ConfigMap, name: default-ca}}]
      perPort:
      - port: 8444
        tls:
          validation:
            mode: {port_mode}
            caCertificateRefs: [{{group: '', kind: ConfigMap, name: port-ca}}]
      - port: 9443
        tls:
          validation:
            caCertificateRefs: [{{group: '', kind: ConfigMap, name: missing-ca}}]
  listeners:
  - {{name: https, port: 8443, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}
  - {{name: https-port, port: 8444, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}
  - {{name: http, port: 8080, protocol: HTTP}}
{extra}"
    ) + &support::route_to("all", "v1")
        + &support::service_yaml("v1")
        + &support::tls_secret("server", &pki.server)
        + &ca_config_map("default-ca", &pki.ca)
        + &ca_config_map("port-ca", &pki.other_ca)
}

/// One GET to `host` over TLS on `port`, presenting `client_cert` if asked.
async fn get(
    agimo: &Agimo,
    port: u16,
    host: &str,
    server: &TestCert,
    client_cert: Option<&TestCert>,
) -> Result<Reply, String> {
    let roots = std::slice::from_ref(&server.der);
    let (stream, _) = client::tls_connect_with_client_cert(agimo.addr(port), host, roots, client_cert)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    client::send_on(stream, Mode::Http1, client::get(host, "/mtls")).await.map_err(|e| format!("request: {e}"))
}

fn listener_condition(statuses: &Statuses, listener: &str, type_: &str) -> (String, String) {
    let gw = ObjectRef { namespace: "default".into(), name: "gw".into() };
    let status = &statuses.gateways[&gw];
    let l = status.listeners.iter().flatten().find(|l| l.name == listener).expect("listener status");
    let c = l.conditions.iter().find(|c| c.type_ == type_).expect("condition");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn a_client_with_a_certificate_of_the_ca_gets_through() {
    let pki = pki();
    let agimo = Agimo::start(&yaml(&pki, "AllowValidOnly", ""), &["v1"]).await;
    let client = pki.ca.client_cert("client.example.com");
    let reply =
        get(&agimo, 8443, "a.example.com", &pki.server, Some(&client)).await.expect("a valid client certificate");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path, "/mtls");
    // Port 8444 has its own CA.
    let client = pki.other_ca.client_cert("client.example.com");
    let reply = get(&agimo, 8444, "a.example.com", &pki.server, Some(&client)).await.expect("the port's CA");
    assert_eq!(reply.status, 200);
    // Plain HTTP listeners ask for nothing.
    assert_eq!(agimo.get(8080, "a.example.com", "/").await.status, 200);
}

#[tokio::test]
async fn clients_without_a_certificate_or_with_another_cas_are_refused() {
    let pki = pki();
    let agimo = Agimo::start(&yaml(&pki, "AllowValidOnly", ""), &["v1"]).await;
    // The same request with a valid certificate gets through (the test
    // above), so these fail at the TLS handshake.
    get(&agimo, 8443, "a.example.com", &pki.server, None).await.expect_err("no client certificate");
    let wrong = pki.other_ca.client_cert("client.example.com");
    get(&agimo, 8443, "a.example.com", &pki.server, Some(&wrong)).await.expect_err("another CA's certificate");
    let self_signed_client = self_signed(&["client.example.com"]);
    get(&agimo, 8443, "a.example.com", &pki.server, Some(&self_signed_client)).await.expect_err("a self-signed one");
    // And the per-port CA is not trusted on the default port's listener, nor
    // the default one on 8444.
    let default_ca_client = pki.ca.client_cert("client.example.com");
    get(&agimo, 8444, "a.example.com", &pki.server, Some(&default_ca_client)).await.expect_err("default CA on 8444");
}

#[tokio::test]
async fn insecure_fallback_lets_clients_without_a_valid_certificate_through() {
    let pki = pki();
    let agimo = Agimo::start(&yaml(&pki, "AllowInsecureFallback", ""), &["v1"]).await;
    let statuses = agimo.apply(&yaml(&pki, "AllowInsecureFallback", "")).await;
    let gw = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    let insecure = gw.conditions.iter().flatten().find(|c| c.type_ == "InsecureFrontendValidationMode");
    let insecure = insecure.expect("the Gateway says it allows insecure fallback");
    assert_eq!((insecure.status.as_str(), insecure.reason.as_str()), ("True", "ConfigurationChanged"));
    let valid = pki.other_ca.client_cert("client.example.com");
    let invalid = pki.ca.client_cert("client.example.com");
    for (what, cert) in [("no certificate", None), ("a valid one", Some(&valid)), ("another CA's", Some(&invalid))] {
        let reply =
            get(&agimo, 8444, "a.example.com", &pki.server, cert).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, 200, "{what}");
    }
    // The default validation, on 8443, still requires a valid certificate.
    get(&agimo, 8443, "a.example.com", &pki.server, None).await.expect_err("8443 is AllowValidOnly");

    // Back to AllowValidOnly: the condition goes.
    let statuses = agimo.apply(&yaml(&pki, "AllowValidOnly", "")).await;
    let gw = &statuses.gateways[&ObjectRef { namespace: "default".into(), name: "gw".into() }];
    assert!(!gw.conditions.iter().flatten().any(|c| c.type_ == "InsecureFrontendValidationMode"));
    get(&agimo, 8444, "a.example.com", &pki.server, None).await.expect_err("8444 now requires a certificate");
}

#[tokio::test]
async fn a_missing_ca_config_map_makes_only_its_port_s_listeners_invalid() {
    let pki = pki();
    let on_missing =
        "  - {name: https-missing, port: 9443, protocol: HTTPS, tls: {certificateRefs: [{name: server}]}}\n";
    let agimo = Agimo::start(&yaml(&pki, "AllowValidOnly", ""), &["v1"]).await;
    let client = pki.ca.client_cert("client.example.com");
    assert_eq!(get(&agimo, 8443, "a.example.com", &pki.server, Some(&client)).await.unwrap().status, 200);

    let statuses = agimo.apply(&yaml(&pki, "AllowValidOnly", on_missing)).await;
    let condition = |type_| listener_condition(&statuses, "https-missing", type_);
    assert_eq!(condition("ResolvedRefs"), ("False".into(), "InvalidCACertificateRef".into()));
    assert_eq!(condition("Accepted"), ("False".into(), "NoValidCACertificate".into()));
    assert_eq!(condition("Programmed").0, "False");
    // The other listeners are as they were, and serve as they did.
    for l in ["https", "https-port", "http"] {
        assert_eq!(listener_condition(&statuses, l, "Accepted"), ("True".into(), "Accepted".into()), "{l}");
        assert_eq!(listener_condition(&statuses, l, "ResolvedRefs").0, "True", "{l}");
    }
    assert_eq!(get(&agimo, 8443, "a.example.com", &pki.server, Some(&client)).await.unwrap().status, 200);
    get(&agimo, 8443, "a.example.com", &pki.server, None).await.expect_err("8443 still requires a certificate");
    // Nothing listens on the port whose CA is missing: no listener is served
    // there without the validation it asks for.
    get(&agimo, 9443, "a.example.com", &pki.server, None).await.expect_err("9443 is not served");

    // The CA of the default validation removed: its listener stops, the
    // per-port one keeps serving.
    let without_default_ca =
        yaml(&pki, "AllowValidOnly", "").replace("name: default-ca, namespace", "name: renamed, namespace");
    let statuses = agimo.apply(&without_default_ca).await;
    assert_eq!(listener_condition(&statuses, "https", "Accepted"), ("False".into(), "NoValidCACertificate".into()));
    get(&agimo, 8443, "a.example.com", &pki.server, Some(&client)).await.expect_err("8443 is not served");
    let port_client = pki.other_ca.client_cert("client.example.com");
    assert_eq!(get(&agimo, 8444, "a.example.com", &pki.server, Some(&port_client)).await.unwrap().status, 200);
}
