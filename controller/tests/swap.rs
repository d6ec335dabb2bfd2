//! Snapshot swaps while traffic flows: no failed request, no dropped
//! connection, sockets opened and closed as listeners come and go.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agimo_testkit::client::{self, Mode};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::{Agimo, HttpRoute, base_yaml, route_for_host};
use tokio_tungstenite::tungstenite::Message;

fn config(generation: usize) -> String {
    // The tested route stays valid in every generation; the churn around it
    // changes: weights, extra routes, a route added and removed.
    let (w1, w2) = if generation.is_multiple_of(2) { (50, 50) } else { (90, 10) };
    let mut yaml = base_yaml(&["v1", "v2"]) + &HttpRoute::new("main").weighted("v1", w1).weighted("v2", w2).yaml();
    for i in 0..(generation % 7) {
        yaml += &route_for_host(&format!("churn-{i}"), &format!("churn-{i}.example"), "v2");
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_drop_nothing() {
    let agimo = Arc::new(Agimo::start(&config(0), &["v1", "v2"]).await);
    let addr = agimo.addr(8080);
    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();

    // Keep-alive HTTP/1.1 clients, new-connection clients, and h2c clients.
    for kind in ["keepalive", "keepalive", "new", "new", "h2c"] {
        let (running, ok, failed, failures) = (running.clone(), ok.clone(), failed.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let record = |result: Result<u16, String>| match result {
                Ok(200) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    failures.lock().unwrap().push(format!("{kind}: {other:?}"));
                }
            };
            match kind {
                "keepalive" => {
                    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                    tokio::spawn(conn);
                    while running.load(Ordering::Relaxed) {
                        let result = match sender.send_request(client::get("main.example", "/ka")).await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                response.into_body().collect().await.map(|_| status).map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        record(result);
                    }
                }
                "new" => {
                    while running.load(Ordering::Relaxed) {
                        let result = client::send(addr, Mode::Http1, client::get("main.example", "/new")).await;
                        record(result.map(|r| r.status.as_u16()).map_err(|e| e.to_string()));
                    }
                }
                _ => {
                    while running.load(Ordering::Relaxed) {
                        let result = client::send(addr, Mode::H2c, client::get("main.example", "/h2")).await;
                        record(result.map(|r| r.status.as_u16()).map_err(|e| e.to_string()));
                    }
                }
            }
        }));
    }

    // Websockets stay open across every swap.
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async("ws://main.example/ws", stream).await.unwrap();
        sockets.push(ws);
    }

    let swaps = 300;
    for generation in 1..=swaps {
        agimo.apply(&config(generation)).await;
        if generation % 50 == 0 {
            for (i, ws) in sockets.iter_mut().enumerate() {
                let text = format!("gen {generation} socket {i}");
                ws.send(Message::text(text.clone())).await.expect("websocket still open");
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.store(false, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{swaps} swaps: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "failures: {:?}", failures.lock().unwrap().iter().take(5).collect::<Vec<_>>());
    assert!(ok > 300, "too little traffic to prove anything: {ok}");
    for ws in &mut sockets {
        ws.send(Message::text("still there")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still there"));
    }
}

#[tokio::test]
async fn sockets_open_and_close_with_listeners() {
    let one = base_yaml(&["v1"]) + &support::route_to("r", "v1");
    let two = one.replace(
        support::HTTP_LISTENER,
        &format!("{}  - {{name: extra, port: 8081, protocol: HTTP}}\n", support::HTTP_LISTENER),
    );
    let agimo = Agimo::start(&one, &["v1"]).await;
    assert!(tokio::net::TcpStream::connect(agimo.addr(8081)).await.is_err(), "8081 is not a listener yet");
    agimo.apply(&two).await;
    assert_eq!(agimo.get(8081, "x", "/").await.status, 200);
    // A keep-alive connection on 8080 survives the change.
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(sender.send_request(client::get("x", "/")).await.unwrap().status(), 200);
    agimo.apply(&one).await;
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(agimo.addr(8081)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "8081 closes when its listener is removed");
    let response = sender.send_request(client::get("x", "/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(agimo.dataplane.sockets().listening, vec![agimo.addr(8080)]);
}
