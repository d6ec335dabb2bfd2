//! Kubernetes mode: the world from watches, statuses back to the API server.
//!
//! ```text
//!  API server ──watches──► Stores ──(debounced)──► World (+ pool addresses) ──► Runtime::compile
//!      ▲                                                                            │
//!      └──────── status writer (Lease holder only) ◄──── Statuses ◄─────────────────┘
//! ```
//!
//! Every replica watches, compiles and serves; only the Lease holder writes
//! statuses.

use std::time::Duration;

use ipnet::IpNet;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::leader::{self, LeaseConfig};
use crate::runtime::{Runtime, ServeOptions, lock, shutdown_signal};
use crate::sources::kube::Stores;
use crate::world::World;
use crate::{addresses, status};

pub struct Options {
    pub serve: ServeOptions,
    /// The `controllerName` of the GatewayClasses to serve.
    pub controller_name: String,
    /// Addresses for Gateways without `spec.addresses`.
    pub gateway_address_pool: Option<IpNet>,
    /// `None` when leader election is off (this replica always writes).
    pub lease: Option<LeaseConfig>,
}

/// A change is compiled once the watches have been quiet this long...
const QUIET: Duration = Duration::from_millis(10);
/// ...or this long after the first change, whichever comes first, so a
/// steady stream of changes cannot postpone a compile forever.
const MAX_DELAY: Duration = Duration::from_millis(200);

pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    tracing::info!(controller = %options.controller_name, "starting in Kubernetes mode");
    let stores = Stores::start(client.clone()).await;
    stores.wait_ready().await;
    tracing::info!("initial lists received");

    let mut world = world(&stores, &options, &Default::default());
    let runtime = Runtime::start(&options.serve, "kubernetes".to_owned(), &world).await?;
    let mut sockets = runtime.sockets();

    let stop = CancellationToken::new();
    let leading = match &options.lease {
        Some(lease) => leader::spawn(client.clone(), lease.clone(), stop.clone()),
        None => tokio::sync::watch::channel(true).1,
    };
    status::writer::spawn(
        client,
        stores.clone(),
        options.controller_name.clone(),
        runtime.statuses(),
        leading.clone(),
        stop.clone(),
    );
    let mut leading_updates = leading.clone();
    // Record the current state at once; later changes follow.
    leading_updates.mark_changed();

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            () = stores.changed() => {
                debounce(&stores).await;
                world = self::world(&stores, &options, &world.bind_errors);
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
    runtime.shutdown(options.serve.shutdown_grace_period).await;
    Ok(())
}

/// Waits until the watches are quiet for [`QUIET`], at most [`MAX_DELAY`].
async fn debounce(stores: &Stores) {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::Instant::now() + QUIET;
        tokio::select! {
            () = stores.changed() => {}
            _ = tokio::time::sleep_until(quiet.min(deadline)) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

fn world(
    stores: &Stores,
    options: &Options,
    bind_errors: &std::collections::BTreeMap<std::net::SocketAddr, agimo_dataplane::BindError>,
) -> World {
    let mut world = stores.world();
    world.controller_name = options.controller_name.clone();
    world.default_address = Some(options.serve.bind_address);
    world.bind_errors = bind_errors.clone();
    if let Some(pool) = &options.gateway_address_pool {
        world.assigned_addresses = addresses::allocate(&world, pool);
    }
    world
}
