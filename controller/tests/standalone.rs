//! The `agimo standalone` binary, as a user runs it: a config directory,
//! edits while it serves, bad files that must not break what works.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::wait::eventually;
use support::process::{Running, spawn};

const LISTENERS: &str = "  - {name: http, port: 8080, protocol: HTTP}\n  - {name: extra, port: 8081, protocol: HTTP}\n";

fn gateway_yaml(ip: &str, listeners: &str) -> String {
    support::gateway_yaml(listeners).replace("{{ip}}", ip)
}

fn route_yaml(name: &str, path: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: v1, port: 80}}]
"
    )
}

/// A config directory with the Gateway (`{ip}:8080` and `:8081`), the
/// backend and a route to `/first`, served by a running `agimo`.
async fn start(echo_port: u16) -> Running {
    start_with(echo_port, &[]).await
}

async fn start_with(echo_port: u16, args: &[&str]) -> Running {
    let ip = support::unique_loopback();
    let dir = std::env::temp_dir().join(format!("agimo-standalone-{}-{}", std::process::id(), ip));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.yaml"), gateway_yaml(&ip.to_string(), LISTENERS)).unwrap();
    std::fs::write(dir.join("backend.yaml"), support::service_at("v1", &echo_port.to_string())).unwrap();
    std::fs::write(dir.join("route.yaml"), route_yaml("first", "/first")).unwrap();
    let running = spawn(ip, dir.clone(), &dir, args);
    eventually("the first route is served", || async {
        get(running.http, "/first").await.is_some_and(|r| r.status == 200)
    })
    .await;
    running
}

async fn get(addr: SocketAddr, path: &str) -> Option<Reply> {
    client::send(addr, Mode::Http1, client::get("standalone.example", path)).await.ok()
}

async fn status(running: &Running) -> String {
    let reply = get(running.admin, "/status").await.expect("admin answers");
    assert_eq!(reply.status, 200);
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as editors and ConfigMap updates do.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[tokio::test]
async fn edits_apply_while_serving_and_bad_files_keep_the_last_good_config() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;

    // An edit applies without a restart.
    write(&running.dir, "route.yaml", &route_yaml("first", "/second"));
    let edited = Instant::now();
    eventually("the edited route is served", || async {
        get(running.http, "/second").await.is_some_and(|r| r.status == 200)
    })
    .await;
    let took = edited.elapsed();
    eprintln!("edit applied after {took:?}");
    assert!(took < Duration::from_secs(5), "the edit took {took:?} to apply");
    assert_eq!(get(running.http, "/first").await.unwrap().status, 404);

    // Malformed YAML: reported with file and line; the last good config serves.
    write(
        &running.dir,
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: [\n",
    );
    eventually("the load error is shown", || async { status(&running).await.contains("invalid YAML") }).await;
    let shown = status(&running).await;
    assert!(shown.contains("route.yaml (document 1): invalid YAML"), "{shown}");
    assert_eq!(get(running.http, "/second").await.unwrap().status, 200);

    // An unknown kind: rejected the same way.
    write(
        &running.dir,
        "route.yaml",
        &(route_yaml("first", "/third") + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"),
    );
    eventually("the unknown kind is reported", || async {
        status(&running).await.contains("unsupported kind Deployment (apps/v1)")
    })
    .await;
    assert_eq!(get(running.http, "/second").await.unwrap().status, 200);
    assert_eq!(get(running.http, "/third").await.unwrap().status, 404);

    // Fixing the file clears the error.
    write(&running.dir, "route.yaml", &route_yaml("first", "/third"));
    eventually("the fixed file is served", || async {
        get(running.http, "/third").await.is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(status(&running).await.contains("loadErrors: []"));

    let log = std::fs::read_to_string(&running.log).unwrap();
    assert!(log.contains("configuration not loaded; the last good configuration keeps serving"), "{log}");
    assert!(log.contains("unsupported kind Deployment"), "{log}");
}

#[tokio::test]
async fn other_files_in_the_config_directory_do_not_reload_it() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    let compiles = || std::fs::read_to_string(&running.log).unwrap().matches("configuration compiled").count();
    let before = compiles();

    // A log kept beside the config (Agimo's own, say) and an editor's
    // backup, written to for a second.
    for i in 0..20 {
        use std::io::Write;
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(running.dir.join("agimo.log")).unwrap();
        writeln!(log, "line {i}").unwrap();
        std::fs::write(running.dir.join("route.yaml~"), format!("backup {i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(compiles(), before, "no reload for files a load does not read");

    // A config file still reloads.
    write(&running.dir, "route.yaml", &route_yaml("first", "/second"));
    eventually("the edited route is served", || async {
        get(running.http, "/second").await.is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(compiles() > before);
}

#[tokio::test]
async fn invalid_resources_get_statuses_and_the_rest_keeps_serving() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    let ip = running.http.ip().to_string();

    // A Gateway of another controller is not ours: no status, no listener.
    // A duplicate listener (same port and hostname) is Conflicted; the
    // Gateway's other listeners keep serving.
    let other = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: other}}
spec: {{controllerName: example.com/someone-else}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: theirs, namespace: default}}
spec:
  gatewayClassName: other
  addresses: [{{value: '{ip}'}}]
  listeners: [{{name: http, port: 8090, protocol: HTTP}}]
"
    );
    write(&running.dir, "other.yaml", &other);
    let gateway = gateway_yaml(&ip, &format!("{LISTENERS}  - {{name: extra-again, port: 8081, protocol: HTTP}}\n"));
    write(&running.dir, "gateway.yaml", &gateway);
    eventually("the conflict is reported", || async { status(&running).await.contains("HostnameConflict") }).await;
    let shown = status(&running).await;
    assert!(!shown.contains("default/theirs"), "{shown}");
    assert!(shown.contains("reason: ListenersNotValid"), "{shown}");
    assert!(tokio::net::TcpStream::connect(SocketAddr::new(running.http.ip(), 8090)).await.is_err());
    assert!(tokio::net::TcpStream::connect(SocketAddr::new(running.http.ip(), 8081)).await.is_err());
    assert_eq!(get(running.http, "/first").await.unwrap().status, 200);

    let metrics = get(SocketAddr::new(running.http.ip(), 9090), "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("requests_total{host=\"*\"}"), "{text}");
}

#[test]
fn a_missing_config_is_a_clear_error_at_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_agimo"))
        .args(["standalone", "--config", "/nonexistent/agimo-config"])
        .args(["--metrics-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"])
        .args(["--keda-scaler-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot load /nonexistent/agimo-config"), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn a_bad_worker_thread_count_is_a_clear_error_at_startup() {
    for (flag, env) in [(Some("0"), None), (None, Some("many"))] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agimo"));
        if let Some(flag) = flag {
            command.args(["--worker-threads", flag]);
        }
        if let Some(env) = env {
            command.env("AGIMO_WORKER_THREADS", env);
        }
        let output = command.args(["standalone", "--config", "/nonexistent/agimo-config"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "a usage error");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let value = flag.or(env).unwrap();
        assert!(stderr.contains(&format!("invalid value '{value}' for '--worker-threads")), "{stderr}");
    }
}

/// Routes every path to the echo backend, then starts `/stream?QUERY` and
/// returns once its response head has arrived: a stream in flight.
async fn stream_in_flight(running: &Running, query: &str) -> http::Response<hyper::body::Incoming> {
    write(&running.dir, "route.yaml", &route_yaml("first", "/"));
    eventually("the catch-all route is served", || async {
        get(running.http, "/stream?n=1").await.is_some_and(|r| r.status == 200)
    })
    .await;
    let stream = tokio::net::TcpStream::connect(running.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(client::get("s.example", &format!("/stream?{query}"))).await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    use http_body_util::BodyExt;

    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    let response = stream_in_flight(&running, "n=4&interval_ms=250").await;

    let kill = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    eventually("readiness turns false, saying why", || async {
        get(running.admin, "/readyz").await.is_some_and(|r| r.status == 503 && r.body == "shutting down\n")
    })
    .await;
    eventually("new connections are refused", || async { tokio::net::TcpStream::connect(running.http).await.is_err() })
        .await;
    let body = response.into_body().collect().await.expect("the stream in flight completes").to_bytes();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 8, "{body:?}");
}

#[tokio::test]
async fn with_a_shutdown_delay_listeners_keep_accepting_while_readiness_fails() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start_with(echo.addr.port(), &["--shutdown-delay", "2s"]).await;
    // Before the signal: the delay cannot have begun earlier.
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    eventually("readiness turns false", || async {
        get(running.admin, "/readyz").await.is_some_and(|r| r.status == 503)
    })
    .await;
    let reply = get(running.http, "/first").await.expect("a new connection is still accepted");
    assert_eq!(reply.status, 200);
    assert!(signalled.elapsed() < Duration::from_secs(2), "checked within the delay");
    eventually("after the delay, new connections are refused", || async {
        tokio::net::TcpStream::connect(running.http).await.is_err()
    })
    .await;
    assert!(signalled.elapsed() >= Duration::from_secs(2), "not before the delay: {:?}", signalled.elapsed());
}

#[tokio::test]
async fn a_busy_port_is_reported_and_retried() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    let busy = SocketAddr::new(running.http.ip(), 8082);
    // Another program holds the port a new listener wants.
    let squatter = std::net::TcpListener::bind(busy).unwrap();
    let listeners = format!("{LISTENERS}  - {{name: busy, port: 8082, protocol: HTTP}}\n");
    write(&running.dir, "gateway.yaml", &gateway_yaml(&running.http.ip().to_string(), &listeners));
    eventually("the busy port is reported in the listener's status", || async {
        let shown = status(&running).await;
        shown.contains("reason: PortUnavailable") && shown.contains(&format!("cannot listen on {busy}"))
    })
    .await;
    assert_eq!(get(running.http, "/first").await.unwrap().status, 200, "the other listeners keep serving");
    drop(squatter);
    eventually("the freed port is listened on", || async {
        get(busy, "/first").await.is_some_and(|r| r.status == 200)
    })
    .await;
    eventually("the status clears", || async { !status(&running).await.contains("PortUnavailable") }).await;
}

#[tokio::test]
async fn a_new_gateway_cannot_take_a_port_from_a_serving_one() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    // `a-newcomer` sorts before `gw`, but `gw` was there first.
    let newcomer = gateway_yaml(&running.http.ip().to_string(), "  - {name: http, port: 8080, protocol: HTTP}\n")
        .replace("metadata: {name: gw, namespace: default}", "metadata: {name: a-newcomer, namespace: default}")
        .replace("kind: GatewayClass\nmetadata: {name: agimo}", "kind: GatewayClass\nmetadata: {name: agimo-again}")
        .replace("gatewayClassName: agimo", "gatewayClassName: agimo-again");
    write(&running.dir, "newcomer.yaml", &newcomer);
    eventually("the newcomer's listener is Conflicted", || async {
        status(&running).await.contains("already serves this hostname for Gateway default/gw listener http")
    })
    .await;
    assert_eq!(get(running.http, "/first").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_configmap_style_file_reloads_when_its_symlinks_swap() {
    use std::os::unix::fs::symlink;
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let ip = support::unique_loopback();
    let dir = std::env::temp_dir().join(format!("agimo-configmap-{}-{}", std::process::id(), ip));
    // The layout kubelet gives a ConfigMap volume: agimo.yaml -> ..data/agimo.yaml,
    // ..data -> ..<timestamp>/, swapped by renaming a new ..data link.
    let version = |n: u32, path: &str| {
        let v = dir.join(format!("..v{n}"));
        std::fs::create_dir_all(&v).unwrap();
        let yaml = gateway_yaml(&ip.to_string(), LISTENERS)
            + "---\n"
            + &support::service_at("v1", &echo.addr.port().to_string())
            + "---\n"
            + &route_yaml("r", path);
        std::fs::write(v.join("agimo.yaml"), yaml).unwrap();
    };
    version(1, "/one");
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/agimo.yaml", dir.join("agimo.yaml")).unwrap();
    let running = spawn(ip, dir.clone(), &dir.join("agimo.yaml"), &[]);
    eventually("the first version is served", || async {
        get(running.http, "/one").await.is_some_and(|r| r.status == 200)
    })
    .await;
    version(2, "/two");
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    eventually("the swapped version is served", || async {
        get(running.http, "/two").await.is_some_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn a_held_request_is_released_when_the_endpointslice_file_gets_an_endpoint() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let running = start(echo.addr.port()).await;
    let held = hold_one_request(&running).await;
    // The workload scales up: the EndpointSlice file gets the endpoint.
    write(&running.dir, "backend.yaml", &support::service_at("v1", &echo.addr.port().to_string()));
    let reply = held.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path, "/held");
    assert_eq!(gated_pending(&running).await, Some(0.0));
}

/// Scales the backend to zero (its EndpointSlice file lists no endpoint),
/// adds a route with the gate on (`gated.example`, default wait-timeout of
/// 60 s), and sends one request there; returns it once it is held.
async fn hold_one_request(running: &Running) -> tokio::task::JoinHandle<std::io::Result<Reply>> {
    write(&running.dir, "backend.yaml", &support::service_without_endpoints("v1"));
    let gated = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gated, namespace: default, annotations: {agimo.dev/scale-to-zero: 'true'}}
spec:
  parentRefs: [{name: gw}]
  hostnames: [gated.example]
  rules: [{backendRefs: [{name: v1, port: 80}]}]
";
    write(&running.dir, "gated.yaml", gated);
    eventually("the gated route is served (series declared at 0)", || async {
        gated_pending(running).await == Some(0.0)
    })
    .await;
    let held = tokio::spawn(client::send(running.http, Mode::Http1, client::get("gated.example", "/held")));
    eventually("the request is held", || async { gated_pending(running).await == Some(1.0) }).await;
    held
}

/// `pending_requests_total` of `gated.example`.
async fn gated_pending(running: &Running) -> Option<f64> {
    let metrics = SocketAddr::new(running.http.ip(), 9090);
    let text = String::from_utf8_lossy(&get(metrics, "/metrics").await.unwrap().body).into_owned();
    support::metric(&text, "pending_requests_total", "gated.example")
}

/// A request held for a backend scaled to zero when SIGTERM comes gets a
/// clear answer as the listeners close (503 `shutting-down`, retry), not a
/// connection cut at the end of the grace period.
#[tokio::test]
async fn sigterm_answers_held_requests_503_shutting_down() {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let mut running = start_with(echo.addr.port(), &["--shutdown-grace-period", "30s"]).await;
    let held = hold_one_request(&running).await;

    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let reply = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered well within the 30 s grace period")
        .unwrap()
        .expect("answered, not cut");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.headers["x-agimo-reason"], "shutting-down");
    assert_eq!(reply.headers["retry-after"], "1");
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "exited {:?} after SIGTERM", signalled.elapsed());
}

/// One client's tally under load: requests answered, requests lost on an
/// open connection, connections refused.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    ok_after_restart: usize,
    lost: Vec<String>,
    refused: usize,
}

/// Sends requests on a keep-alive connection until `stop`; a request that
/// fails on an open connection is lost, a connection that cannot be made is
/// refused (nothing was accepted), and either way it reconnects.
async fn load_client(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    restarted: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use std::sync::atomic::Ordering;
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tally.refused += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            match sender.send_request(client::get("standalone.example", "/first?delay_ms=5")).await {
                Ok(response) if response.status() == 200 => {
                    use http_body_util::BodyExt;
                    if response.into_body().collect().await.is_err() {
                        tally.lost.push("body cut".into());
                        break;
                    }
                    tally.ok += 1;
                    if restarted.load(Ordering::Relaxed) {
                        tally.ok_after_restart += 1;
                    }
                }
                Ok(response) => {
                    tally.lost.push(format!("status {}", response.status()));
                    break;
                }
                Err(e) => {
                    tally.lost.push(e.to_string());
                    break;
                }
            }
        }
    }
    tally
}

#[tokio::test]
async fn kill_9_under_load_loses_only_the_requests_in_flight() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let mut first = start(echo.addr.port()).await;
    let addr = first.http;
    let (stop, restarted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..8).map(|_| tokio::spawn(load_client(addr, stop.clone(), restarted.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The same configuration, started again.
    let dir = std::env::temp_dir().join(format!("agimo-standalone-{}-{}-again", std::process::id(), addr.ip()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["gateway.yaml", "backend.yaml", "route.yaml"] {
        std::fs::copy(first.dir.join(file), dir.join(file)).unwrap();
    }
    let second = spawn(addr.ip(), dir.clone(), &dir, &[]);
    eventually("served again after the restart", || async {
        get(second.http, "/first").await.is_some_and(|r| r.status == 200)
    })
    .await;
    restarted.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut lost = 0;
    for client in clients {
        let tally = client.await.unwrap();
        assert!(tally.lost.len() <= 1, "a client lost more than the request in flight: {tally:?}");
        assert!(tally.ok_after_restart > 0, "a client was not served after the restart: {tally:?}");
        lost += tally.lost.len();
    }
    eprintln!("kill -9 under load: {lost} requests in flight lost, of 8 clients");
}

#[tokio::test]
async fn sigterm_ends_a_stream_that_outlasts_the_grace_period() {
    use http_body_util::BodyExt;

    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let mut running = start_with(echo.addr.port(), &["--shutdown-grace-period", "1s"]).await;
    // Forty lines a quarter of a second apart: ten seconds of stream.
    let response = stream_in_flight(&running, "n=40&interval_ms=250").await;

    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the stream was cut, not completed");
    let status = running.child.wait().unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "exited {took:?} after SIGTERM");
}
