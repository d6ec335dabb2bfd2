//! Kubernetes mode: the world from watches, statuses back to the API server.
//!
//! ```text
//!  API server ──watches──► Stores ──(debounced)──► World (+ pool addresses
//!      ▲                                              or Gateway Services plan) ──► Runtime::compile
//!      │                                                       │                        │
//!      ├──── Service + EndpointSlice writer (Lease holder) ◄───┘                        │
//!      └──────── status writer (Lease holder only) ◄──── Statuses ◄─────────────────────┘
//! ```
//!
//! Every replica watches, compiles and serves; only the Lease holder writes
//! statuses and Gateway Services. On SIGTERM a replica keeps watching and
//! writing through its shutdown delay: the EndpointSlices then mark it
//! terminating (the Lease holder writes them, itself included) before its
//! listeners close.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::gateway_services::{self, Exposure};
use crate::leader::{self, LeaseConfig};
use crate::runtime::{Runtime, ServeOptions, lock, shutdown_signal};
use crate::sources::kube::{OwnPods, Stores};
use crate::world::World;
use crate::{address_pool, status};

/// The Gateway Services (and their EndpointSlices) the plan wants.
type Desired = watch::Sender<Arc<gateway_services::Desired>>;

pub struct Options {
    pub serve: ServeOptions,
    /// The `controllerName` of the GatewayClasses to serve.
    pub controller_name: String,
    /// Addresses for Gateways without `spec.addresses`.
    pub gateway_address_pool: Option<IpNet>,
    /// A Service per Gateway instead of binding Gateway addresses.
    pub exposure: Option<Exposure>,
    /// `None` when leader election is off (this replica always writes).
    pub lease: Option<LeaseConfig>,
}

/// A change is compiled at once, but at most once per this interval: under a
/// burst of changes (a `kubectl apply` of many objects) the ones that arrive
/// meanwhile are compiled together at its end. The first change after a quiet
/// spell (an endpoint turning ready for a held request) waits for nothing.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    tracing::info!(controller = %options.controller_name, "starting in Kubernetes mode");
    let own_pods = options.exposure.as_ref().map(|e| OwnPods {
        namespace: e.namespace.clone(),
        selector: e.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    });
    let stores = Stores::start(client.clone(), own_pods).await;
    stores.wait_ready().await;
    tracing::info!("initial lists received");

    let desired: Desired = watch::Sender::new(Arc::default());
    let mut world = world(&stores, &options, World::default(), &desired);
    let mut runtime = Runtime::start(&options.serve, "kubernetes".to_owned(), &world).await?;
    let mut sockets = runtime.sockets();

    let stop = CancellationToken::new();
    let leading = match &options.lease {
        Some(lease) => leader::spawn(client.clone(), lease.clone(), stop.clone()),
        None => tokio::sync::watch::channel(true).1,
    };
    status::writer::spawn(
        client.clone(),
        stores.clone(),
        options.controller_name.clone(),
        runtime.statuses(),
        leading.clone(),
        stop.clone(),
    );
    if options.exposure.is_some() || options.gateway_address_pool.is_some() {
        gateway_services::writer::spawn(
            client,
            stores.clone(),
            options.controller_name.clone(),
            desired.subscribe(),
            leading.clone(),
            stop.clone(),
        );
    }
    let mut last_compile = tokio::time::Instant::now();
    let mut leading_updates = leading.clone();
    // Record the current state at once; later changes follow.
    leading_updates.mark_changed();

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Set on SIGTERM: the end of the shutdown delay, until which this replica
    // serves, watches and writes as before (its listeners close after it).
    let mut leaving: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        tokio::select! {
            _ = &mut shutdown, if leaving.is_none() => {
                tracing::info!(delay = ?options.serve.shutdown_delay, "leaving: serving and writing through the shutdown delay");
                runtime.begin_shutdown();
                leaving = Some(tokio::time::Instant::now() + options.serve.shutdown_delay);
            }
            () = tokio::time::sleep_until(leaving.unwrap_or(far)) => break,
            () = stores.changed() => {
                if let Some(wait) = (last_compile + MIN_INTERVAL).checked_duration_since(tokio::time::Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                last_compile = tokio::time::Instant::now();
                world = self::world(&stores, &options, world, &desired);
                runtime.compile(&world);
            }
            Ok(()) = sockets.changed() => {
                let errors = sockets.borrow_and_update().errors.clone();
                if errors != world.bind_errors {
                    world.bind_errors = errors;
                    runtime.compile(&world);
                }
            }
            Ok(()) = leading_updates.changed() => {
                lock(&runtime.published).leader = Some(*leading_updates.borrow_and_update());
            }
        }
    }
    stop.cancel();
    runtime.shutdown(Duration::ZERO, options.serve.shutdown_grace_period).await;
    Ok(())
}

/// The current objects, with the previous world's bind errors (which are
/// not objects).
fn world(stores: &Stores, options: &Options, previous: World, desired: &Desired) -> World {
    let mut world = stores.world();
    world.controller_name = options.controller_name.clone();
    world.default_address = Some(options.serve.bind_address);
    world.bind_errors = previous.bind_errors;
    let mut services = None;
    if let Some(pool) = &options.gateway_address_pool {
        world.assigned_addresses = address_pool::allocate(&world, pool);
        services = Some(gateway_services::plan_addressed(&world));
    }
    if let Some(exposure) = &options.exposure {
        let plan = gateway_services::plan(&world, exposure);
        world.exposed = Some(plan.gateways);
        services = Some(plan.services);
    }
    if let Some(services) = services {
        world.generates_services = true;
        desired.send_if_modified(|current| {
            let changed = **current != services;
            if changed {
                *current = Arc::new(services);
            }
            changed
        });
    }
    world
}
