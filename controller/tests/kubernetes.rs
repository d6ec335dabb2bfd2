//! Kubernetes mode against a real API server (`conformance/local-cluster`).
//!
//! Run inside the cluster's network namespace, as `./test.sh` does:
//!
//! ```sh
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test -p agimo-controller --features kubernetes-tests --test kubernetes
//! ```
//!
//! Each test gets its own namespace, GatewayClass and controller name, its
//! own `agimo run` process(es), its own Gateway address pool (10.245.K.0/28)
//! and backends on 10.246.K.x, so tests run in parallel without meeting.

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use agimo_testkit::client::{self, Mode};
use agimo_testkit::tls::self_signed;
use agimo_testkit::wait::{condition, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use support::cluster::*;

#[tokio::test]
async fn statuses_traffic_and_changes() {
    let mut c = Cluster::new("basic").await;
    let v1 = c.backend("v1", 1).await;
    let v2 = c.backend("v2", 2).await;
    c.start_agimo();
    c.apply(
        &(gateway("gw", "  - {name: http, port: 80, protocol: HTTP}\n")
            + &service("svc", v1)
            + &route("r", "gw", "/app", "svc")),
    )
    .await;

    // GatewayClass: Accepted, with the features it supports.
    let class = c
        .wait_for("GatewayClass", &c.ns, "Accepted", |o| {
            has(o, &o["status"]["conditions"], "Accepted", "True", "Accepted")
        })
        .await;
    let features: Vec<&str> =
        class["status"]["supportedFeatures"].as_array().unwrap().iter().filter_map(|f| f["name"].as_str()).collect();
    // With an address pool, Agimo writes a Service per Gateway: it claims
    // GatewayInfrastructure too.
    let mut expected = agimo_controller::compiler::SUPPORTED_FEATURES.to_vec();
    expected.push(agimo_controller::compiler::INFRASTRUCTURE_FEATURE);
    expected.sort_unstable();
    assert_eq!(features, expected);

    // Gateway: Accepted and Programmed at its generation, an address from the
    // pool, one attached route.
    let gw = c
        .wait_for("Gateway", "gw", "Programmed with an address", |o| {
            has(o, &o["status"]["conditions"], "Accepted", "True", "Accepted")
                && has(o, &o["status"]["conditions"], "Programmed", "True", "Programmed")
                && gateway_address(o).is_some()
                && o["status"]["listeners"][0]["attachedRoutes"] == 1
        })
        .await;
    let address = gateway_address(&gw).unwrap();
    assert_eq!(gw["status"]["addresses"][0]["type"], "IPAddress");
    assert!(address.to_string().starts_with(&format!("10.245.{}.", c.k)), "{address}");
    let listener = &gw["status"]["listeners"][0];
    assert_eq!(listener["supportedKinds"][0]["kind"], "HTTPRoute");
    for t in ["Accepted", "Programmed", "ResolvedRefs"] {
        assert_eq!(condition(&listener["conditions"], t).unwrap()["status"], "True", "{t}");
    }

    // HTTPRoute: Accepted and ResolvedRefs for our Gateway.
    let ns = c.ns.clone();
    c.wait_for("HTTPRoute", "r", "Accepted", |o| {
        our_parent(o, &ns, "gw").is_some_and(|p| {
            has(o, &p["conditions"], "Accepted", "True", "Accepted")
                && has(o, &p["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
        })
    })
    .await;
    let at = SocketAddr::new(address, 80);
    eventually_served(at, "app.test", "/app/x", 200, "v1").await;

    // An HTTPRoute change takes effect, and the status follows the generation.
    c.apply(&route("r", "gw", "/moved", "svc")).await;
    eventually_served(at, "app.test", "/moved", 200, "v1").await;
    eventually_served(at, "app.test", "/app/x", 404, "").await;
    c.wait_for("HTTPRoute", "r", "observedGeneration 2", |o| {
        o["metadata"]["generation"] == 2
            && our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "Accepted", "True", "Accepted"))
    })
    .await;

    // An EndpointSlice change takes effect.
    c.apply(&service("svc", v2)).await;
    eventually_served(at, "app.test", "/moved", 200, "v2").await;

    // A missing backend: ResolvedRefs=False BackendNotFound, and 500.
    c.apply(&route("r", "gw", "/moved", "missing")).await;
    c.wait_for("HTTPRoute", "r", "BackendNotFound", |o| {
        our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "ResolvedRefs", "False", "BackendNotFound"))
    })
    .await;
    eventually_served(at, "app.test", "/moved", 500, "").await;

    // Another controller's parents entry survives our writes.
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.ns, &api_resource("HTTPRoute"));
    let mut r = serde_json::to_value(api.get("r").await.unwrap()).unwrap();
    let generation = r["metadata"]["generation"].clone();
    r["status"]["parents"].as_array_mut().unwrap().push(serde_json::json!({
        "controllerName": "example.com/other",
        "parentRef": {"name": "elsewhere"},
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}]
    }));
    let r: DynamicObject = serde_json::from_value(r).unwrap();
    api.replace_status("r", &Default::default(), &r).await.unwrap();
    c.apply(&route("r", "gw", "/moved", "svc")).await;
    let r = c
        .wait_for("HTTPRoute", "r", "resolved again", |o| {
            our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "ResolvedRefs", "True", "ResolvedRefs"))
        })
        .await;
    let controllers: Vec<&str> =
        r["status"]["parents"].as_array().unwrap().iter().filter_map(|p| p["controllerName"].as_str()).collect();
    assert!(controllers.contains(&"example.com/other"), "{controllers:?}");
}

#[tokio::test]
async fn two_gateways_each_get_an_address_and_serve_port_80() {
    let mut c = Cluster::new("multi").await;
    let v1 = c.backend("one", 1).await;
    let v2 = c.backend("two", 2).await;
    c.start_agimo();
    let http = "  - {name: http, port: 80, protocol: HTTP}\n";
    c.apply(
        &(gateway("gw-one", http)
            + &gateway("gw-two", http)
            + &service("svc-one", v1)
            + &service("svc-two", v2)
            + &route("to-one", "gw-one", "/", "svc-one")
            + &route("to-two", "gw-two", "/", "svc-two")),
    )
    .await;
    let mut addresses = Vec::new();
    for name in ["gw-one", "gw-two"] {
        let gw = c.wait_for("Gateway", name, "an address", |o| gateway_address(o).is_some()).await;
        addresses.push(gateway_address(&gw).unwrap());
    }
    assert_ne!(addresses[0], addresses[1]);
    eventually_served(SocketAddr::new(addresses[0], 80), "x", "/", 200, "one").await;
    eventually_served(SocketAddr::new(addresses[1], 80), "x", "/", 200, "two").await;
}

#[tokio::test]
async fn a_certificate_change_applies_to_new_handshakes() {
    let mut c = Cluster::new("tls").await;
    let v1 = c.backend("v1", 1).await;
    c.start_agimo();
    let secret = |cert: &agimo_testkit::tls::TestCert| support::tls_secret_in("{ns}", "cert", cert);
    let first = self_signed(&["secure.test"]);
    let second = self_signed(&["secure.test"]);
    c.apply(
        &(gateway(
            "gw",
            "  - {name: https, port: 443, protocol: HTTPS, hostname: secure.test, tls: {certificateRefs: [{name: cert}]}}\n",
        ) + &secret(&first)
            + &service("svc", v1)
            + &route("r", "gw", "/", "svc")),
    )
    .await;
    let gw = c
        .wait_for("Gateway", "gw", "Programmed", |o| {
            gateway_address(o).is_some()
                && has(o, &o["status"]["listeners"][0]["conditions"], "Programmed", "True", "Programmed")
        })
        .await;
    let at = SocketAddr::new(gateway_address(&gw).unwrap(), 443);
    let handshake = |cert: &agimo_testkit::tls::TestCert| {
        let root = cert.der.clone();
        async move { client::tls_connect(at, "secure.test", &[root], &[]).await }
    };
    // The listener may serve the certificate a moment before the route is
    // attached (a 404 then): wait for the route's 200 over it.
    let served = |cert| async move {
        let (stream, _) = handshake(cert).await.ok()?;
        client::send_on(stream, Mode::Http1, client::get("secure.test", "/")).await.ok().map(|r| r.status.as_u16())
    };
    eventually("the route is served with the first certificate", || async {
        match served(&first).await {
            Some(200) => Ok(()),
            last => Err(format!("{last:?}")),
        }
    })
    .await;

    c.apply(&secret(&second)).await;
    eventually("the new certificate is served", || async { handshake(&second).await.is_ok() }).await;
    assert!(handshake(&first).await.is_err(), "the old certificate is no longer served");
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let mut c = Cluster::new("leader").await;
    let v1 = c.backend("v1", 1).await;
    c.start_agimo();
    c.start_agimo();
    c.apply(
        &(gateway("gw", "  - {name: http, port: 80, protocol: HTTP}\n")
            + &service("svc", v1)
            + &route("r", "gw", "/", "svc")),
    )
    .await;
    let ns = c.ns.clone();
    c.wait_for("HTTPRoute", "r", "Accepted", |o| our_parent(o, &ns, "gw").is_some()).await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.ns);
    let holder = leases.get("agimo").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let leader = holder.strip_prefix("replica-").unwrap().parse::<usize>().unwrap();
    // Both replicas compile and report whether they lead; only the holder does.
    for (i, (_, admin)) in c.agimos.iter().enumerate() {
        let want = format!("leader: {}", i == leader);
        eventually(&format!("replica {i} reports {want}"), || async {
            let status = get(*admin, "admin", "/status").await.map(|r| String::from_utf8_lossy(&r.body).into_owned());
            if status.as_deref().is_some_and(|s| s.contains(&want)) { Ok(()) } else { Err(format!("{status:?}")) }
        })
        .await;
    }

    // The leader goes away; the follower takes the Lease and writes the
    // status of a route created afterwards.
    let (mut child, _) = c.agimos.remove(leader);
    child.kill().unwrap();
    child.wait().unwrap();
    c.apply(&route("after", "gw", "/after", "svc")).await;
    let started = Instant::now();
    c.wait_for("HTTPRoute", "after", "Accepted by the new leader", |o| our_parent(o, &ns, "gw").is_some()).await;
    eprintln!("the follower wrote the new route's status after {:?}", started.elapsed());
    let holder = leases.get("agimo").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_ne!(holder, format!("replica-{leader}"));
    // The follower's dataplane now holds the Gateway's address (the two
    // replicas share one network namespace here, so only one could bind).
    let gw = c.get("Gateway", "gw").await;
    eventually_served(SocketAddr::new(gateway_address(&gw).unwrap(), 80), "x", "/after", 200, "v1").await;
}

/// With an address pool, a Gateway gets a ClusterIP Service beside it whose
/// endpoint is its address, carrying its `spec.infrastructure` metadata; the
/// Service follows the Gateway's changes and goes with it.
#[tokio::test]
async fn a_gateways_service_beside_it_carries_its_infrastructure_metadata() {
    let mut c = Cluster::new("infra").await;
    c.start_agimo();
    let listeners = "  - {name: http, port: 80, protocol: HTTP}\n";
    let infrastructure = "  infrastructure:\n    labels: {team: payments, tier: edge}\n    annotations: {note: hi}\n";
    c.apply(&(gateway("gw", listeners) + infrastructure)).await;
    let gw = c
        .wait_for("Gateway", "gw", "Programmed with an address", |o| {
            has(o, &o["status"]["conditions"], "Programmed", "True", "Programmed") && gateway_address(o).is_some()
        })
        .await;
    let address = gateway_address(&gw).unwrap();

    let services: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.ns, &api_resource("Service"));
    let by_gateway = kube::api::ListParams::default().labels("gateway.networking.k8s.io/gateway-name=gw");
    let service = eventually("the Gateway's Service in its namespace", || async {
        let list = services.list(&by_gateway).await.map_err(|e| e.to_string())?;
        let service = list.items.into_iter().next().ok_or_else(|| "none yet".to_owned())?;
        let value = serde_json::to_value(&service).unwrap();
        if value["metadata"]["labels"]["tier"] == "edge" { Ok(value) } else { Err(format!("{value:#}")) }
    })
    .await;
    assert_eq!(service["metadata"]["labels"]["team"], "payments");
    assert_eq!(service["metadata"]["annotations"]["note"], "hi");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(service["spec"]["selector"].is_null(), "{service:#}");
    assert_eq!(service["metadata"]["ownerReferences"][0]["kind"], "Gateway");
    assert_eq!(service["metadata"]["ownerReferences"][0]["uid"], gw["metadata"]["uid"]);
    let name = service["metadata"]["name"].as_str().unwrap().to_owned();

    // Its EndpointSlice: the Gateway's address at the listener port.
    let slice = c
        .wait_for("EndpointSlice", &format!("{name}-ipv4"), "the Gateway's address", |o| {
            o["endpoints"][0]["addresses"][0] == address.to_string()
        })
        .await;
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], name.as_str());
    assert_eq!(slice["metadata"]["labels"]["team"], "payments");
    assert_eq!(slice["ports"][0]["name"], "port-80");
    assert_eq!(slice["ports"][0]["port"], 80);

    // A label the Gateway drops leaves the Service; a new listener port joins it.
    let listeners = listeners.to_owned() + "  - {name: alt, port: 8080, protocol: HTTP}\n";
    c.apply(&(gateway("gw", &listeners) + "  infrastructure:\n    labels: {team: payments}\n")).await;
    c.wait_for("Service", &name, "without tier, with port 8080", |o| {
        o["metadata"]["labels"]["tier"].is_null()
            && o["spec"]["ports"].as_array().is_some_and(|p| p.iter().any(|p| p["port"] == 8080))
    })
    .await;

    // Deleted with its Gateway.
    let gateways: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.ns, &api_resource("Gateway"));
    gateways.delete("gw", &Default::default()).await.expect("delete the Gateway");
    eventually("the Service is gone", || async {
        match services.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
