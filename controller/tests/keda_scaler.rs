//! Agimo as KEDA's external scaler, spoken to as KEDA does (the gRPC
//! contract of `externalscaler.proto`), with two replicas: the one KEDA
//! talks to answers for both.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agimo_scaler::proto::external_scaler_client::ExternalScalerClient;
use agimo_scaler::proto::{GetMetricsRequest, IsActiveResponse, ScaledObjectRef};
use agimo_testkit::client::{self, Mode};
use agimo_testkit::wait::eventually;
use support::process::{Running, serve_config_at};
use tonic::Code;
use tonic::transport::Channel;

/// A route for `app.example` whose Service has no endpoint (a workload at
/// zero), gated, so its requests wait.
fn config() -> String {
    support::gateway_yaml(support::HTTP_LISTENER)
        + &support::service_without_endpoints("app")
        + "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: shop, annotations: {agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 60s}}
spec:
  parentRefs: [{name: gw, namespace: default}]
  hostnames: [app.example]
  rules: [{backendRefs: [{name: app, namespace: default, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: '', kind: Service}]
"
}

/// Two replicas, each told of both scaler addresses (itself included, as a
/// headless Service would list it).
async fn replicas() -> (Running, Running) {
    let (a, b) = (support::unique_loopback(), support::unique_loopback());
    let peers = format!("{a}:9091,{b}:9091");
    let args = ["--keda-scaler-peers", peers.as_str()];
    let config = config();
    tokio::join!(serve_config_at(a, &config, &args), serve_config_at(b, &config, &args))
}

async fn keda(replica: &Running) -> ExternalScalerClient<Channel> {
    let addr = SocketAddr::new(replica.admin.ip(), 9091);
    ExternalScalerClient::connect(format!("http://{addr}")).await.expect("the scaler listens")
}

fn scaled_object(meta: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "app".into(),
        namespace: "shop".into(),
        scaler_metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

async fn value(keda: &mut ExternalScalerClient<Channel>, so: &ScaledObjectRef) -> i64 {
    let request =
        GetMetricsRequest { scaled_object_ref: Some(so.clone()), metric_name: "agimo-httproute-shop-app".into() };
    keda.get_metrics(request).await.unwrap().into_inner().metric_values[0].metric_value
}

#[tokio::test]
async fn a_request_held_by_any_replica_is_pushed_to_keda_at_once() {
    let (a, b) = replicas().await;
    let mut keda = keda(&a).await;
    let so = scaled_object(&[
        ("scalerAddress", "agimo-keda-scaler.agimo-system:9091"),
        ("httpRoute", "app"),
        ("targetValue", "5"),
    ]);

    let spec = keda.get_metric_spec(so.clone()).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].metric_name, "agimo-httproute-shop-app");
    assert_eq!(spec.metric_specs[0].target_size_float, 5.0);
    assert!(!keda.is_active(so.clone()).await.unwrap().into_inner().result, "nothing held yet");

    let mut stream = keda.stream_is_active(so.clone()).await.unwrap().into_inner();
    let first: IsActiveResponse = stream.message().await.unwrap().unwrap();
    assert!(!first.result, "inactive at first");

    // A request held by the other replica: the stream says so at once
    // (well before its periodic message, a second apart).
    let held = tokio::spawn(client::send(b.http, Mode::Http1, client::get("app.example", "/wake")));
    let asked = Instant::now();
    let pushed = loop {
        let message =
            tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a push").unwrap().unwrap();
        if message.result {
            break asked.elapsed();
        }
    };
    println!("held on replica B -> pushed to KEDA by replica A: {pushed:?}");
    assert!(keda.is_active(so.clone()).await.unwrap().into_inner().result);
    assert_eq!(value(&mut keda, &so).await, 1, "replica A counts B's held request");
    assert_eq!(b.metric_total("pending_requests_total").await, 1.0);
    assert_eq!(a.metric_total("pending_requests_total").await, 0.0);

    // Two more, one on each replica.
    let more = [
        tokio::spawn(client::send(a.http, Mode::Http1, client::get("app.example", "/a"))),
        tokio::spawn(client::send(b.http, Mode::Http1, client::get("app.example", "/b"))),
    ];
    eventually("the sum of both replicas' held requests is 3", || {
        let (mut keda, so) = (keda.clone(), so.clone());
        async move { value(&mut keda, &so).await == 3 }
    })
    .await;

    // Clients give up: nothing held, and after the activity window the
    // stream turns inactive (KEDA's cooldown then scales to zero).
    held.abort();
    for request in more {
        request.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let message =
            tokio::time::timeout_at(deadline.into(), stream.message()).await.expect("turns inactive").unwrap().unwrap();
        if !message.result {
            break;
        }
    }
    assert_eq!(value(&mut keda, &so).await, 0);
}

#[tokio::test]
async fn bad_metadata_and_unknown_routes_are_errors_that_say_why() {
    let (a, _b) = replicas().await;
    let mut keda = keda(&a).await;
    let error = |status: tonic::Status| (status.code(), status.message().to_owned());

    let (code, message) = error(keda.is_active(scaled_object(&[("httpRoute", "nope")])).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("HTTPRoute shop/nope is not served by this Agimo"), "{message}");

    let (code, message) = error(keda.stream_is_active(scaled_object(&[("host", "other.example")])).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains(r#"host "other.example" is not a hostname"#), "{message}");

    let (code, message) = error(keda.get_metric_spec(scaled_object(&[("httproute", "app")])).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains(r#"unknown metadata key "httproute""#), "{message}");

    let (code, message) = error(keda.get_metric_spec(scaled_object(&[])).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("ScaledObject shop/app: metadata needs httpRoute"), "{message}");

    let request = GetMetricsRequest { scaled_object_ref: None, metric_name: "x".into() };
    let (code, message) = error(keda.get_metrics(request).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "GetMetrics without a scaledObjectRef");

    let (code, message) = error(
        keda.get_metric_spec(scaled_object(&[("host", "app.example"), ("targetValue", "-1")])).await.unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("expected a number above 0"), "{message}");

    // The same route by its hostname is fine.
    let so = scaled_object(&[("host", "app.example")]);
    assert!(!keda.is_active(so).await.unwrap().into_inner().result);
}

#[tokio::test]
async fn a_single_replica_keeps_the_stream_open_and_repeats_its_state() {
    let alone = support::process::serve_config(&config(), &[]).await;
    let mut keda = keda(&alone).await;
    let mut stream = keda.stream_is_active(scaled_object(&[("httpRoute", "app")])).await.unwrap().into_inner();
    // The state at once, then again every second, on one open stream.
    for n in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .unwrap_or_else(|_| panic!("message {n} within 3 s"))
            .unwrap_or_else(|e| panic!("message {n}: {e}"))
            .unwrap_or_else(|| panic!("the stream ended after {n} messages"));
        assert!(!message.result);
    }
}
