//! Probes (startup, readiness, liveness) and lifecycle handlers (preStop),
//! as the kubelet runs them: parsed once from the container's spec (named
//! ports resolved, headers checked), then run from the agent's network
//! namespace, which reaches pod addresses over the bridge.
//!
//! ```text
//!   container.{startup,readiness,liveness}Probe ──parse──▶ Spec ──run(Target)──▶ Ok / Err(why)
//!                                                              └─ Counter: consecutive results vs thresholds
//!   httpGet:   GET scheme://(host or pod IP):port/path (HTTPS unverified); 200–399 is success
//!   tcpSocket: a TCP connection to (host or pod IP):port
//!   exec:      nsenter --target PID --mount --net [--setuid --setgid] -- COMMAND, exit 0 is success
//! ```
//!
//! A redirect counts as success (the kubelet follows redirects to the same
//! host first). gRPC probes are not supported: a container with one does
//! not start, and says why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;
use tokio::process::Command;

/// The probes of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// What a probe or a lifecycle handler does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    HttpGet {
        scheme: Scheme,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    TcpSocket {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    /// Lifecycle handlers only.
    Sleep(Duration),
}

/// A probe, with the kubelet's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds` (liveness and
    /// startup), used instead of the pod's when the probe kills.
    pub termination_grace: Option<Duration>,
}

/// Why a probe or handler cannot be used; the container does not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} has no handler (exec, httpGet, tcpSocket)")]
    NoAction(String),
    #[error("{0}: gRPC probes are not supported by agimo-node-agent")]
    Grpc(String),
    #[error("{what}: no containerPort named {name:?}")]
    NamedPort { what: String, name: String },
    #[error("{what}: port {port} is out of range")]
    BadPort { what: String, port: i32 },
    #[error("{what}: invalid header {name:?}")]
    BadHeader { what: String, name: String },
    #[error("{0}: exec without a command")]
    EmptyCommand(String),
}

/// The container's probe of `kind`, if it has one.
pub fn of(container: &Container, kind: Kind) -> Result<Option<Spec>, ProbeError> {
    let probe = match kind {
        Kind::Startup => &container.startup_probe,
        Kind::Readiness => &container.readiness_probe,
        Kind::Liveness => &container.liveness_probe,
    };
    probe.as_ref().map(|p| parse(p, container, &format!("{kind} probe"))).transpose()
}

/// Parses `probe` of `container` (`what` names it in errors).
pub fn parse(probe: &Probe, container: &Container, what: &str) -> Result<Spec, ProbeError> {
    let seconds = |s: Option<i32>, default: u64, min: u64| {
        Duration::from_secs(s.and_then(|s| u64::try_from(s).ok()).unwrap_or(default).max(min))
    };
    let count =
        |n: Option<i32>, default: u32| n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0).unwrap_or(default);
    Ok(Spec {
        action: action(
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
            probe.grpc.as_ref(),
            container,
            what,
        )?,
        initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
        period: seconds(probe.period_seconds, 10, 1),
        timeout: seconds(probe.timeout_seconds, 1, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
        termination_grace: probe
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    })
}

/// Parses a lifecycle handler (`preStop`) of `container`.
pub fn parse_handler(handler: &LifecycleHandler, container: &Container, what: &str) -> Result<Action, ProbeError> {
    if let Some(sleep) = &handler.sleep {
        return Ok(Action::Sleep(Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0))));
    }
    action(handler.exec.as_ref(), handler.http_get.as_ref(), handler.tcp_socket.as_ref(), None, container, what)
}

fn action(
    exec: Option<&ExecAction>,
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    grpc: Option<&GRPCAction>,
    container: &Container,
    what: &str,
) -> Result<Action, ProbeError> {
    if let Some(exec) = exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(ProbeError::EmptyCommand(what.to_owned()));
        }
        return Ok(Action::Exec { command });
    }
    if let Some(get) = http_get {
        let scheme = if get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let path = get.path.clone().unwrap_or_default();
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        let mut headers = Vec::new();
        for h in get.http_headers.iter().flatten() {
            let bad = || ProbeError::BadHeader { what: what.to_owned(), name: h.name.clone() };
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| bad())?;
            headers.push((name, value));
        }
        return Ok(Action::HttpGet {
            scheme,
            host: get.host.clone().filter(|h| !h.is_empty()),
            port: port(&get.port, container, what)?,
            path,
            headers,
        });
    }
    if let Some(tcp) = tcp_socket {
        return Ok(Action::TcpSocket {
            host: tcp.host.clone().filter(|h| !h.is_empty()),
            port: port(&tcp.port, container, what)?,
        });
    }
    if grpc.is_some() {
        return Err(ProbeError::Grpc(what.to_owned()));
    }
    Err(ProbeError::NoAction(what.to_owned()))
}

/// A port number, or the number of the container's port with that name.
fn port(port: &IntOrString, container: &Container, what: &str) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| ProbeError::NamedPort { what: what.to_owned(), name: name.clone() })?,
        },
    };
    u16::try_from(number).ok().filter(|n| *n > 0).ok_or(ProbeError::BadPort { what: what.to_owned(), port: number })
}

/// Consecutive results of a probe, against its thresholds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    successes: u32,
    failures: u32,
}

impl Counter {
    /// Records one result; returns the probe's result once enough
    /// consecutive results agree (`successThreshold` successes or
    /// `failureThreshold` failures), `None` while they do not yet.
    pub fn record(&mut self, spec: &Spec, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= spec.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= spec.failure_threshold).then_some(false)
        }
    }
}

/// The container a probe or handler runs against.
#[derive(Clone, Debug)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    /// The container's process (exec enters its namespaces).
    pub pid: u32,
    /// The container's environment (for exec).
    pub env: Vec<(String, String)>,
    /// `(uid, gid)` the container runs as, for exec; `None`: root.
    pub user: Option<(u32, u32)>,
}

/// Runs `action` once against `target`, within `timeout`.
pub async fn run(action: &Action, target: &Target, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match action {
            Action::HttpGet { scheme, host, port, path, headers } => {
                http_get(*scheme, host.as_deref(), *port, path, headers, target).await
            }
            Action::TcpSocket { host, port } => {
                let addr = resolve(host.as_deref(), *port, target).await?;
                TcpStream::connect(addr).await.map(drop).map_err(|e| format!("dial tcp {addr}: {e}"))
            }
            Action::Exec { command } => exec(command, target).await,
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn resolve(host: Option<&str>, port: u16, target: &Target) -> Result<SocketAddr, String> {
    let Some(host) = host else { return Ok(SocketAddr::new(IpAddr::V4(target.pod_ip), port)) };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("lookup {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("lookup {host}: no address"))
}

async fn http_get(
    scheme: Scheme,
    host: Option<&str>,
    port: u16,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    target: &Target,
) -> Result<(), String> {
    let addr = resolve(host, port, target).await?;
    let authority = match host {
        Some(h) => format!("{h}:{port}"),
        None => addr.to_string(),
    };
    let url = format!("{}://{authority}{path}", if scheme == Scheme::Https { "https" } else { "http" });
    let mut request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, concat!("kube-probe/agimo-node-agent-", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("GET {url}: dial tcp {addr}: {e}"))?;
    let status = match scheme {
        Scheme::Http => send(TokioIo::new(stream), request).await,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(host.unwrap_or(&addr.ip().to_string()).to_owned())
                .map_err(|e| format!("GET {url}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, stream)
                .await
                .map_err(|e| format!("GET {url}: TLS handshake: {e}"))?;
            send(TokioIo::new(tls), request).await
        }
    }
    .map_err(|e| format!("GET {url}: {e}"))?;
    if (200..400).contains(&status) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {status}")) }
}

async fn send<I>(io: I, request: Request<Empty<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// TLS for HTTPS probes: the kubelet does not verify the certificate.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs `command` in the container's mount and network namespaces, as its
/// user, with its environment.
async fn exec(command: &[String], target: &Target) -> Result<(), String> {
    let mut nsenter = Command::new(crate::process::tool("nsenter"));
    nsenter.args(["--target", &target.pid.to_string(), "--mount", "--net"]);
    if let Some((uid, gid)) = target.user {
        nsenter.args(["--setgid", &gid.to_string(), "--setuid", &uid.to_string()]);
    }
    let output = nsenter
        .arg("--")
        .args(command)
        .env_clear()
        .env("PATH", crate::process::PATH)
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("nsenter: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let text: String = text.trim().chars().take(1024).collect();
    let code = output.status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
    Err(format!("command {command:?} exited with {code}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_container(probes: serde_json::Value) -> Container {
        let mut c = json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]});
        c.as_object_mut().unwrap().extend(probes.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    fn target() -> Target {
        Target { pod_ip: Ipv4Addr::LOCALHOST, pid: std::process::id(), env: vec![], user: None }
    }

    #[test]
    fn parses_probes_with_the_kubelets_defaults() {
        let c = mk_container(json!({
            "readinessProbe": {"httpGet": {"path": "readyz", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": 9090}, "initialDelaySeconds": 5, "periodSeconds": 2,
                              "timeoutSeconds": 3, "failureThreshold": 1, "terminationGracePeriodSeconds": 7},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]}, "periodSeconds": 0}
        }));
        let readiness = of(&c, Kind::Readiness).unwrap().unwrap();
        assert_eq!(
            readiness,
            Spec {
                action: Action::HttpGet {
                    scheme: Scheme::Http,
                    host: None,
                    port: 8080,
                    path: "/readyz".into(),
                    headers: vec![]
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
                termination_grace: None,
            }
        );
        let liveness = of(&c, Kind::Liveness).unwrap().unwrap();
        assert_eq!(liveness.action, Action::TcpSocket { host: None, port: 9090 });
        assert_eq!(
            (liveness.initial_delay, liveness.period, liveness.timeout, liveness.failure_threshold),
            (Duration::from_secs(5), Duration::from_secs(2), Duration::from_secs(3), 1)
        );
        assert_eq!(liveness.termination_grace, Some(Duration::from_secs(7)));
        let startup = of(&c, Kind::Startup).unwrap().unwrap();
        assert_eq!(startup.action, Action::Exec { command: vec!["cat".into(), "/tmp/started".into()] });
        assert_eq!(startup.period, Duration::from_secs(1), "at least a second");
        assert_eq!(of(&mk_container(json!({})), Kind::Readiness), Ok(None));
    }

    #[test]
    fn https_headers_and_hosts() {
        let c = mk_container(json!({"readinessProbe": {"httpGet": {
            "scheme": "HTTPS", "host": "example.test", "port": "8443", "path": "/healthz",
            "httpHeaders": [{"name": "X-Probe", "value": "1"}]}}}));
        let Action::HttpGet { scheme, host, port, path, headers } = of(&c, Kind::Readiness).unwrap().unwrap().action
        else {
            panic!("httpGet")
        };
        assert_eq!(
            (scheme, host.as_deref(), port, path.as_str()),
            (Scheme::Https, Some("example.test"), 8443, "/healthz")
        );
        assert_eq!(headers, vec![(HeaderName::from_static("x-probe"), HeaderValue::from_static("1"))]);
    }

    #[test]
    fn unusable_probes_are_errors_that_say_why() {
        let err = |probe: serde_json::Value| {
            of(&mk_container(json!({"livenessProbe": probe})), Kind::Liveness).unwrap_err().to_string()
        };
        assert_eq!(err(json!({"httpGet": {"port": "metrics"}})), "Liveness probe: no containerPort named \"metrics\"");
        assert_eq!(err(json!({"tcpSocket": {"port": 70000}})), "Liveness probe: port 70000 is out of range");
        assert_eq!(
            err(json!({"grpc": {"port": 9090}})),
            "Liveness probe: gRPC probes are not supported by agimo-node-agent"
        );
        assert_eq!(err(json!({})), "Liveness probe has no handler (exec, httpGet, tcpSocket)");
        assert_eq!(
            err(json!({"httpGet": {"port": 80, "httpHeaders": [{"name": "bad header", "value": "x"}]}})),
            "Liveness probe: invalid header \"bad header\""
        );
    }

    #[test]
    fn pre_stop_handlers() {
        let c = mk_container(json!({}));
        let sleep: LifecycleHandler = serde_json::from_value(json!({"sleep": {"seconds": 5}})).unwrap();
        assert_eq!(parse_handler(&sleep, &c, "preStop"), Ok(Action::Sleep(Duration::from_secs(5))));
        let get: LifecycleHandler =
            serde_json::from_value(json!({"httpGet": {"port": "http", "path": "/drain"}})).unwrap();
        assert!(matches!(parse_handler(&get, &c, "preStop"), Ok(Action::HttpGet { port: 8080, .. })));
    }

    #[test]
    fn results_change_after_enough_consecutive_ones() {
        let spec = Spec {
            action: Action::Sleep(Duration::ZERO),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
            termination_grace: None,
        };
        let mut counter = Counter::default();
        assert_eq!(counter.record(&spec, true), None);
        assert_eq!(counter.record(&spec, true), Some(true));
        assert_eq!(counter.record(&spec, false), None);
        assert_eq!(counter.record(&spec, false), None);
        assert_eq!(counter.record(&spec, true), None, "a success resets the failures");
        assert_eq!(counter.record(&spec, false), None);
        assert_eq!(counter.record(&spec, false), None);
        assert_eq!(counter.record(&spec, false), Some(false));
        assert_eq!(counter.record(&spec, false), Some(false), "still failing");
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut buf = vec![0; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if request.starts_with("GET /ok ") && request.contains("x-probe: yes") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        let get = |path: &str| Action::HttpGet {
            scheme: Scheme::Http,
            host: None,
            port,
            path: path.into(),
            headers: vec![(HeaderName::from_static("x-probe"), HeaderValue::from_static("yes"))],
        };
        let timeout = Duration::from_secs(2);
        assert_eq!(run(&get("/ok"), &target(), timeout).await, Ok(()));
        assert_eq!(run(&get("/down"), &target(), timeout).await, Err("HTTP probe failed with statuscode: 503".into()));
        assert_eq!(run(&Action::TcpSocket { host: None, port }, &target(), timeout).await, Ok(()));
        // A port nobody listens on (the listener's, once it is closed, is
        // not reliably free; port 1 is privileged and unused here).
        let refused = run(&Action::TcpSocket { host: Some("127.0.0.1".into()), port: 1 }, &target(), timeout).await;
        assert!(refused.unwrap_err().starts_with("dial tcp 127.0.0.1:1: "));
        let slow = run(&Action::Sleep(Duration::from_secs(5)), &target(), Duration::from_millis(50)).await;
        assert_eq!(slow, Err("timed out after 50ms".into()));
    }
}
