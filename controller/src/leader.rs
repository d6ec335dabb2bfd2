//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Every replica watches, compiles and serves; only the Lease holder writes
//! statuses. Each write of the Lease carries the `resourceVersion` it read,
//! so two replicas can never both take an expired Lease: the API server
//! refuses the second write with a conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::Timestamp;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are in `spec.holderIdentity`; unique per replica.
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry: Duration,
}

/// Campaigns for the Lease until `stop` fires, then releases it if held.
/// The receiver says whether this replica leads right now.
pub fn spawn(client: kube::Client, config: LeaseConfig, stop: CancellationToken) -> watch::Receiver<bool> {
    let (leading, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match try_acquire_or_renew(&api, &config).await {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    if !*leading.borrow() {
                        tracing::info!(lease = %config.name, identity = %config.identity, "became the leader: writing statuses");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(lease = %config.name, "lost the lease: no longer writing statuses");
                    }
                    leading.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %config.name, error = %e, "lease update failed");
                    // Step down before the Lease can expire under us.
                    let stale = last_renewal.is_none_or(|t| t.elapsed() > config.duration * 2 / 3);
                    if stale && *leading.borrow() {
                        tracing::warn!(lease = %config.name, "cannot renew the lease: no longer writing statuses");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(config.retry) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(e) = release(&api, &config).await {
                tracing::warn!(lease = %config.name, error = %e, "cannot release the lease");
            }
        }
    });
    receiver
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let duration = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let mut lease = match api.get_opt(&config.name).await? {
        Some(lease) => lease,
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(config.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !ours {
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration).max(0) as u64);
        let expired = match (&spec.holder_identity, &spec.renew_time) {
            (None, _) | (_, None) => true,
            (Some(h), _) if h.is_empty() => true,
            (Some(_), Some(renewed)) => {
                let age = Timestamp::now().duration_since(renewed.0);
                age.as_secs_f64() > held_for.as_secs_f64()
            }
        };
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration);
    // `lease.metadata.resourceVersion` makes this a compare-and-swap.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up so another replica can take over at once.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&config.name, &PostParams::default(), &lease).await.map(|_| ())
}
