//! A pod's status as the kubelet would write it, computed from what the
//! agent knows (a pure function, so it is tested without a cluster): phase,
//! addresses, start time, container statuses and the conditions
//! PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady and
//! Ready, whose `lastTransitionTime` only moves when their status does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the agent knows about a pod it runs.
#[derive(Debug)]
pub struct Observed<'a> {
    pub pod: &'a Pod,
    pub host_ip: Ipv4Addr,
    /// Set once the pod's network namespace exists.
    pub pod_ip: Option<Ipv4Addr>,
    pub start_time: &'a Time,
    pub containers: Vec<ContainerStatus>,
    pub init_containers: Vec<ContainerStatus>,
}

/// The last transition of each condition type: `(status, time)`.
#[derive(Clone, Debug, Default)]
pub struct Transitions(BTreeMap<String, (String, Time)>);

impl Transitions {
    /// Seeded from the conditions a pod already has (an agent restart keeps
    /// their times).
    pub fn from_pod(pod: &Pod) -> Transitions {
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        Transitions(
            conditions
                .into_iter()
                .flatten()
                .filter_map(|c| Some((c.type_.clone(), (c.status.clone(), c.last_transition_time.clone()?))))
                .collect(),
        )
    }

    fn condition(
        &mut self,
        type_: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
        now: &Time,
    ) -> PodCondition {
        let status = if ok { "True" } else { "False" };
        let entry = self.0.entry(type_.to_owned()).or_insert_with(|| (status.to_owned(), now.clone()));
        if entry.0 != status {
            *entry = (status.to_owned(), now.clone());
        }
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(entry.1.clone()),
            ..Default::default()
        }
    }
}

/// The phase: Pending until every container has started once (or while
/// there is no network namespace yet); Succeeded or Failed once every
/// container terminated for good (restartPolicy Never or OnFailure);
/// Running otherwise.
pub fn phase(has_sandbox: bool, containers: &[ContainerStatus]) -> &'static str {
    let state = |c: &ContainerStatus| c.state.clone().unwrap_or_default();
    if !has_sandbox || containers.is_empty() {
        return "Pending";
    }
    if containers.iter().all(|c| state(c).terminated.is_some()) {
        let failed = containers.iter().any(|c| state(c).terminated.is_some_and(|t| t.exit_code != 0));
        return if failed { "Failed" } else { "Succeeded" };
    }
    let started_once =
        |c: &ContainerStatus| state(c).running.is_some() || state(c).terminated.is_some() || c.last_state.is_some();
    if containers.iter().all(started_once) { "Running" } else { "Pending" }
}

/// The pod's status.
pub fn pod_status(observed: Observed<'_>, transitions: &mut Transitions, now: &Time) -> PodStatus {
    let pod = observed.pod;
    let has_sandbox = observed.pod_ip.is_some();
    let phase = phase(has_sandbox, &observed.containers);
    let done = matches!(phase, "Succeeded" | "Failed");

    let unready: Vec<&str> = observed.containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let containers_ready = unready.is_empty() && !done;
    let unready_message =
        || (!unready.is_empty()).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    // Readiness gates: conditions others set on the pod.
    let gates: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .map(|g| g.condition_type.as_str())
        .filter(|gate| {
            let current = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
            !current.into_iter().flatten().any(|c| c.type_ == *gate && c.status == "True")
        })
        .collect();
    let ready = containers_ready && gates.is_empty();
    let (ready_reason, ready_message) = if done {
        (Some("PodCompleted"), None)
    } else if !containers_ready {
        (Some("ContainersNotReady"), unready_message())
    } else if !gates.is_empty() {
        (Some("ReadinessGatesNotReady"), Some(format!("the status of pod readiness gates is not \"True\": {gates:?}")))
    } else {
        (None, None)
    };
    let init_done = observed.init_containers.is_empty() || has_sandbox;

    let conditions = vec![
        transitions.condition("PodReadyToStartContainers", has_sandbox, None, None, now),
        transitions.condition("Initialized", init_done, (!init_done).then_some("ContainersNotInitialized"), None, now),
        transitions.condition("Ready", ready, ready_reason, ready_message.clone(), now),
        transitions.condition(
            "ContainersReady",
            containers_ready,
            if done { Some("PodCompleted") } else { (!containers_ready).then_some("ContainersNotReady") },
            if done { None } else { unready_message() },
            now,
        ),
        transitions.condition("PodScheduled", true, None, None, now),
    ];
    let observed_generation = pod.metadata.generation;
    let conditions = conditions.into_iter().map(|c| PodCondition { observed_generation, ..c }).collect();

    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(observed.host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: observed.host_ip.to_string() }]),
        pod_ip: observed.pod_ip.map(|ip| ip.to_string()),
        pod_ips: observed.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(observed.start_time.clone()),
        container_statuses: Some(observed.containers),
        init_container_statuses: (!observed.init_containers.is_empty()).then_some(observed.init_containers),
        observed_generation,
        ..Default::default()
    }
}

/// `status` as the body of a strategic merge patch: conditions are merged
/// by type, so a reason or message that no longer applies must be sent as
/// `null` to be removed.
pub fn patchable(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(conditions) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for condition in conditions.iter_mut().filter_map(|c| c.as_object_mut()) {
            for key in ["reason", "message"] {
                condition.entry(key).or_insert(serde_json::Value::Null);
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn time(s: &str) -> Time {
        Time(s.parse::<Timestamp>().unwrap())
    }

    fn mk_pod(spec: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "n", "generation": 1}, "spec": spec, "status": status}),
        )
        .unwrap()
    }

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(time("2026-01-01T00:00:01Z")) }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(name: &str, reason: &str, restarted: bool) -> ContainerStatus {
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated { exit_code: 2, ..Default::default() }),
            ..Default::default()
        };
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: None }),
                ..Default::default()
            }),
            last_state: restarted.then_some(terminated),
            ..Default::default()
        }
    }

    fn terminated(name: &str, exit_code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated { exit_code, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn condition<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
    }

    fn observe<'a>(pod: &'a Pod, ip: Option<&str>, start: &'a Time, containers: Vec<ContainerStatus>) -> Observed<'a> {
        Observed {
            pod,
            host_ip: "10.244.0.1".parse().unwrap(),
            pod_ip: ip.map(|ip| ip.parse().unwrap()),
            start_time: start,
            containers,
            init_containers: vec![],
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(false, &[running("a", true)]), "Pending");
        assert_eq!(phase(true, &[waiting("a", "ContainerCreating", false)]), "Pending");
        assert_eq!(phase(true, &[running("a", false), waiting("b", "CreateContainerConfigError", false)]), "Pending");
        assert_eq!(phase(true, &[running("a", false), waiting("b", "CrashLoopBackOff", true)]), "Running");
        assert_eq!(phase(true, &[terminated("a", 0), running("b", true)]), "Running");
        assert_eq!(phase(true, &[terminated("a", 0), terminated("b", 0)]), "Succeeded");
        assert_eq!(phase(true, &[terminated("a", 0), terminated("b", 1)]), "Failed");
    }

    #[test]
    fn running_and_ready_pod() {
        let pod = mk_pod(json!({"containers": [{"name": "a"}]}), json!({}));
        let start = time("2026-01-01T00:00:00Z");
        let now = time("2026-01-01T00:00:02Z");
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true)]),
            &mut Transitions::default(),
            &now,
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, "10.244.1.5");
        assert_eq!(status.host_ip.as_deref(), Some("10.244.0.1"));
        assert_eq!(status.host_ips.as_ref().unwrap()[0].ip, "10.244.0.1");
        assert_eq!(status.start_time, Some(start));
        for type_ in ["PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
            let c = condition(&status, type_);
            assert_eq!(c.status, "True", "{type_}");
            assert_eq!(c.observed_generation, Some(1));
        }
        assert_eq!(status.container_statuses.as_ref().unwrap()[0].name, "a");
    }

    #[test]
    fn not_ready_until_every_container_is_and_transition_times_move_only_on_change() {
        let pod = mk_pod(json!({"containers": [{"name": "a"}, {"name": "b"}]}), json!({}));
        let start = time("2026-01-01T00:00:00Z");
        let mut transitions = Transitions::default();
        let t1 = time("2026-01-01T00:00:01Z");
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true), running("b", false)]),
            &mut transitions,
            &t1,
        );
        let ready = condition(&status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ContainersNotReady")));
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [b]"));

        let t2 = time("2026-01-01T00:00:02Z");
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true), running("b", true)]),
            &mut transitions,
            &t2,
        );
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Ready").last_transition_time, Some(t2.clone()));
        assert_eq!(condition(&status, "PodScheduled").last_transition_time, Some(t1), "unchanged since t1");

        let t3 = time("2026-01-01T00:00:03Z");
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true), running("b", true)]),
            &mut transitions,
            &t3,
        );
        assert_eq!(condition(&status, "Ready").last_transition_time, Some(t2), "still True: time kept");
    }

    #[test]
    fn pending_without_a_network_namespace() {
        let pod = mk_pod(json!({"containers": [{"name": "a"}]}), json!({}));
        let start = time("2026-01-01T00:00:00Z");
        let status = pod_status(
            observe(&pod, None, &start, vec![waiting("a", "ContainerCreating", false)]),
            &mut Transitions::default(),
            &start,
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip, None);
        assert_eq!(condition(&status, "PodReadyToStartContainers").status, "False");
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "PodScheduled").status, "True");
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let spec = json!({"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "example.com/gate"}]});
        let start = time("2026-01-01T00:00:00Z");
        let pod = mk_pod(spec.clone(), json!({}));
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true)]),
            &mut Transitions::default(),
            &start,
        );
        assert_eq!(condition(&status, "ContainersReady").status, "True");
        assert_eq!(condition(&status, "Ready").reason.as_deref(), Some("ReadinessGatesNotReady"));
        let pod = mk_pod(spec, json!({"conditions": [{"type": "example.com/gate", "status": "True"}]}));
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true)]),
            &mut Transitions::default(),
            &start,
        );
        assert_eq!(condition(&status, "Ready").status, "True");
    }

    #[test]
    fn patches_clear_reasons_and_messages_that_no_longer_apply() {
        let pod = mk_pod(json!({"containers": [{"name": "a"}]}), json!({}));
        let start = time("2026-01-01T00:00:00Z");
        let status = pod_status(
            observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true)]),
            &mut Transitions::default(),
            &start,
        );
        let patch = patchable(&status);
        let ready = patch["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert!(ready["reason"].is_null() && ready.get("reason").is_some());
        assert!(ready["message"].is_null() && ready.get("message").is_some());
        assert_eq!(patch["podIP"], "10.244.1.5");
    }

    #[test]
    fn transitions_start_from_the_pods_conditions() {
        let pod = mk_pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-12-31T00:00:00Z"}]}),
        );
        let start = time("2026-01-01T00:00:00Z");
        let mut transitions = Transitions::from_pod(&pod);
        let status =
            pod_status(observe(&pod, Some("10.244.1.5"), &start, vec![running("a", true)]), &mut transitions, &start);
        assert_eq!(condition(&status, "Ready").last_transition_time, Some(time("2025-12-31T00:00:00Z")));
    }
}
