//! The scenarios, each printing its figures and returning its table rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use kube::api::{DeleteParams, ListParams};
use serde_json::{Value, json};

use crate::cluster::{self, NS, StatusWrites, Usage};
use crate::traffic::{self, Tally};
use crate::{Env, Row};

/// Creations in flight at once when many objects are written.
const CONCURRENCY: usize = 16;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `p50 / p99 / max` in ms.
fn spread(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99)),
        ms(*times.last().expect("measured"))
    )
}

fn row(scenario: &str, figure: String, target: &str) -> Row {
    println!("{scenario}: {figure}");
    Row { scenario: scenario.to_owned(), figure, target: target.to_owned() }
}

async fn delete_routes(env: &Env, namespace: &str, label: &str) -> Result<()> {
    let api = env.cluster.routes(namespace).await?;
    api.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&format!("bench={label}"))).await?;
    Ok(())
}

/// Waits until `host` answers 200 through the Gateway (up to 120 s).
async fn served(env: &Env, host: &str) -> Result<Duration> {
    served_path(env, host, "/").await
}

async fn served_path(env: &Env, host: &str, path: &str) -> Result<Duration> {
    traffic::until_served(env.gateway, (host, path), Duration::from_millis(5), Duration::from_secs(120))
        .await
        .with_context(|| format!("{host}{path} not served within 120 s"))
}

/// Waits until `host` answers 200 twenty times in a row on new connections:
/// the Gateway's Service spreads them over both replicas, so each serves
/// the route (the first 200 says only that one of them does).
async fn served_by_all(env: &Env, host: &str, path: &str) -> Result<()> {
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 20 {
        served_path(env, host, path).await?;
        let reply = agimo_testkit::client::send(
            env.gateway,
            agimo_testkit::client::Mode::Http1,
            agimo_testkit::client::get(host, path),
        )
        .await;
        in_a_row = if reply.is_ok_and(|r| r.status == 200) { in_a_row + 1 } else { 0 };
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{host}{path} not served by every replica within 120 s");
        }
    }
    Ok(())
}

/// Routes applied at once: until every one is Accepted, until every one is
/// served, and the status writes per route.
pub async fn attached(env: &Env) -> Result<Vec<Row>> {
    let n = env.opts.attached_routes;
    let api = env.cluster.routes(NS).await?;
    let writes = StatusWrites::start(&env.cluster, NS, "attached").await?;
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let route =
                cluster::route(NS, &format!("attached-{i}"), &format!("attached-{i}.bench"), "echo-a", "attached");
            env.cluster.create_route(&api, route)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    println!("{n} HTTPRoutes created in {:.2} s", created.as_secs_f64());
    let all = ListParams::default().labels("bench=attached");
    loop {
        let list = api.list(&all).await?;
        let accepted =
            list.items.iter().filter(|r| cluster::accepted(&serde_json::to_value(r).unwrap_or_default())).count();
        if accepted == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{accepted} of {n} routes Accepted after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = started.elapsed();
    stream::iter(0..n)
        .map(|i| async move { served(env, &format!("attached-{i}.bench")).await })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let served_all = started.elapsed();
    // Writes that come late (a second replica, a requeue) count too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = writes.count.load(Ordering::Relaxed) as f64 / n as f64;
    delete_routes(env, NS, "attached").await?;
    Ok(vec![
        row(
            &format!("{n} routes applied at once"),
            format!(
                "all Accepted {:.2} s, all served {:.2} s after the first write (writes took {:.2} s)",
                accepted.as_secs_f64(),
                served_all.as_secs_f64(),
                created.as_secs_f64()
            ),
            "",
        ),
        row("status writes per route", format!("{writes:.2}"), "≤ 1.1"),
    ])
}

/// Routes added one at a time: from the write to the first 200, idle and
/// under background traffic.
pub async fn propagation(env: &Env) -> Result<Vec<Row>> {
    let n = env.opts.propagation_routes;
    let api = env.cluster.routes(NS).await?;
    let mut rows = Vec::new();
    for phase in ["idle", "loaded"] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = None;
        if phase == "loaded" {
            env.cluster
                .create_route(&api, cluster::route(NS, "background", "background.bench", "echo-a", "prop-bg"))
                .await?;
            served(env, "background.bench").await?;
            let rate = env.opts.background_rps;
            load = Some(traffic::background(env.gateway, "background.bench".into(), rate, 64, stop.clone()));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (mut total, mut after_ack) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let host = format!("prop-{phase}-{i}.bench");
            let route = cluster::route(NS, &format!("prop-{phase}-{i}"), &host, "echo-a", &format!("prop-{phase}"));
            let started = Instant::now();
            let ack = env.cluster.create_route(&api, route).await?;
            traffic::until_served(env.gateway, (&host, "/"), Duration::from_millis(1), Duration::from_secs(30))
                .await
                .with_context(|| format!("{host} not served within 30 s"))?;
            let elapsed = started.elapsed();
            total.push(elapsed);
            after_ack.push(elapsed.saturating_sub(ack));
        }
        let mut label = format!("propagation, {phase}");
        if let Some(load) = load {
            stop.store(true, Ordering::Relaxed);
            let (sent, failed, took) = load.await?;
            label = format!(
                "propagation, under {:.0} req/s ({failed} of {sent} background requests failed)",
                sent as f64 / took.as_secs_f64()
            );
            delete_routes(env, NS, "prop-bg").await?;
        }
        rows.push(row(&format!("{label}: write → first 200"), spread(&mut total), "p50 ≤ 10 ms, p99 ≤ 30 ms"));
        rows.push(row(&format!("{label}: API server's answer → first 200"), spread(&mut after_ack), ""));
        delete_routes(env, NS, &format!("prop-{phase}")).await?;
    }
    Ok(rows)
}

/// The route `changing` in one of two versions: `/a` to echo-a, or `/a/b`
/// (and a header match) to echo-b. A GET of `/a/b` matches both.
fn changing(version: usize) -> Value {
    let rules = if version.is_multiple_of(2) {
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                "backendRefs": [{"name": "echo-a", "port": 80}]}])
    } else {
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}},
                            {"headers": [{"name": "x-version", "value": version.to_string()}]}],
                "backendRefs": [{"name": "echo-b", "port": 80}]}])
    };
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "changing", "namespace": NS, "labels": {"bench": "changes"}},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["changing.bench"], "rules": rules}})
}

/// One route's matches and backends changed again and again under
/// traffic to it and to another route: every answer must be a 200 from a
/// backend of the route's old or new version.
pub async fn changes(env: &Env) -> Result<Vec<Row>> {
    let n = env.opts.changes;
    env.cluster.apply(changing(0)).await?;
    env.cluster.apply(cluster::route(NS, "steady", "steady.bench", "echo-a", "changes")).await?;
    served_by_all(env, "changing.bench", "/a/b").await?;
    served_by_all(env, "steady.bench", "/").await?;
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let backends = vec!["echo-a".to_owned(), "echo-b".to_owned()];
        clients.push(traffic::check(
            env.gateway,
            "changing.bench".into(),
            "/a/b".into(),
            backends,
            tally.clone(),
            stop.clone(),
        ));
    }
    for _ in 0..2 {
        let backends = vec!["echo-a".to_owned()];
        clients.push(traffic::check(
            env.gateway,
            "steady.bench".into(),
            "/".into(),
            backends,
            tally.clone(),
            stop.clone(),
        ));
    }
    let mut took = Vec::with_capacity(n);
    for version in 1..=n {
        let started = Instant::now();
        env.cluster.apply(changing(version)).await?;
        let expected = if version.is_multiple_of(2) { "echo-a-" } else { "echo-b-" };
        // Until the new version answers (a probe of its own).
        loop {
            let reply = agimo_testkit::client::send(
                env.gateway,
                agimo_testkit::client::Mode::Http1,
                agimo_testkit::client::get("changing.bench", "/a/b"),
            )
            .await;
            if reply.is_ok_and(|r| r.status == 200 && String::from_utf8_lossy(&r.body).contains(expected)) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("version {version} of route changing not served within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    delete_routes(env, NS, "changes").await?;
    Ok(vec![
        row(&format!("{n} changes of a route under traffic"), tally.summary(), "0 non-200"),
        row("each change: write → new version served", spread(&mut took), ""),
    ])
}

async fn usages(env: &Env) -> Result<Vec<(String, Usage)>> {
    let mut out = Vec::new();
    for (name, ip) in env.cluster.agimo_pods().await? {
        out.push((name, cluster::usage(&ip).await?));
    }
    Ok(out)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// Routes in many namespaces, each namespace's Service's endpoints changed
/// every second: each replica's memory and CPU.
pub async fn scale(env: &Env) -> Result<Vec<Row>> {
    let (n, m) = (env.opts.scale_routes, env.opts.scale_namespaces.max(1));
    let namespaces: Vec<String> = (0..m).map(|j| format!("agimo-cp-scale-{j}")).collect();
    for ns in &namespaces {
        env.cluster.delete_namespace(ns).await;
    }
    for ns in &namespaces {
        env.cluster.namespace_gone(ns).await?;
    }
    let before = usages(env).await?;
    for ns in &namespaces {
        env.cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await?;
        for object in cluster::manual_service(ns, "svc", &[(&env.echo_a, true)]) {
            env.cluster.apply(object).await?;
        }
    }
    let started = Instant::now();
    let mut apis = Vec::new();
    for ns in &namespaces {
        apis.push(env.cluster.routes(ns).await?);
    }
    stream::iter(0..n)
        .map(|i| {
            let ns = &namespaces[i % m];
            let route = cluster::route(ns, &format!("r-{i}"), &format!("s-{i}.bench"), "svc", "scale");
            env.cluster.create_route(&apis[i % m], route)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    for i in (0..n).step_by((n / 50).max(1)).chain([n - 1]) {
        served(env, &format!("s-{i}.bench")).await?;
    }
    println!("{n} routes in {m} namespaces written and served in {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = usages(env).await?;
    // Endpoint churn: every second, a tenth of the namespaces' Services
    // gain or lose their second endpoint.
    let churn_started = Instant::now();
    for second in 0..env.opts.seconds {
        let tick = Instant::now();
        for (j, ns) in namespaces.iter().enumerate().filter(|(j, _)| (*j as u64 % 10) == second % 10) {
            let both = (second / 10 + j as u64).is_multiple_of(2);
            let endpoints: Vec<(&str, bool)> =
                if both { vec![(&env.echo_a, true), (&env.echo_b, true)] } else { vec![(&env.echo_a, true)] };
            env.cluster.apply(cluster::slice(ns, "svc", &endpoints)).await?;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    let churned = usages(env).await?;
    let wall = churn_started.elapsed().as_secs_f64();
    for i in (0..n).step_by((n / 20).max(1)) {
        served(env, &format!("s-{i}.bench")).await?;
    }
    let mut rows = Vec::new();
    for (name, after) in &churned {
        let find = |list: &[(String, Usage)]| list.iter().find(|(p, _)| p == name).map(|(_, u)| *u).unwrap_or_default();
        let (start, at_load) = (find(&before), find(&loaded));
        rows.push(row(
            &format!("{n} routes, {m} namespaces: replica {name}"),
            format!(
                "RSS {} before, {} with the routes, {} after {:.0} s of endpoint churn; CPU {:.0}% of a core during the churn",
                mb(start.rss),
                mb(at_load.rss),
                mb(after.rss),
                wall,
                (after.cpu - at_load.cpu) / wall * 100.0
            ),
            "RSS ≤ 40 MB",
        ));
    }
    for ns in &namespaces {
        env.cluster.delete_namespace(ns).await;
    }
    Ok(rows)
}

/// One of a backend's two endpoints turning ready and unready every second
/// under traffic: no error while the other is ready.
pub async fn flapping(env: &Env) -> Result<Vec<Row>> {
    let both = [(env.echo_a.as_str(), true), (env.echo_b.as_str(), true)];
    for object in cluster::manual_service(NS, "flap", &both) {
        env.cluster.apply(object).await?;
    }
    env.cluster.apply(cluster::route(NS, "flap", "flap.bench", "flap", "flapping")).await?;
    served_by_all(env, "flap.bench", "/").await?;
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let backends = vec!["echo-a".to_owned(), "echo-b".to_owned()];
        clients.push(traffic::check(
            env.gateway,
            "flap.bench".into(),
            "/".into(),
            backends,
            tally.clone(),
            stop.clone(),
        ));
    }
    for second in 0..env.opts.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready = second % 2 == 1;
        env.cluster.apply(cluster::slice(NS, "flap", &[(&env.echo_a, true), (&env.echo_b, ready)])).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    delete_routes(env, NS, "flapping").await?;
    Ok(vec![row(&format!("an endpoint flapping every second for {} s", env.opts.seconds), tally.summary(), "0 errors")])
}
