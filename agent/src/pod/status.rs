//! Pod status as kubelet computes it: container states from the newest two instances of each
//! container, phase by `getPhase`, and the kubelet-owned conditions (runtime-defaults.md §8).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_sandbox::protocol;

use super::build::{pod_spec, qos, Qos};

/// One container instance as the agent knows it: the shim's record, or a start that failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub record: protocol::ContainerStatus,
    /// Set when the runtime could not start the instance (containerd's `StartError`, exit 128).
    pub start_error: Option<String>,
}

/// What the worker saw during its last sync.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every known instance, any order.
    pub instances: Vec<Instance>,
    /// Container name -> (reason, message) of its last failed sync step (kubelet's reason cache).
    pub waiting: HashMap<String, (String, String)>,
    pub image_ids: HashMap<String, String>,
    pub sandbox_ready: bool,
    pub start_time: Option<Timestamp>,
    pub pod_ip: Option<std::net::IpAddr>,
    pub host_ip: Option<String>,
}

fn terminated(i: &Instance) -> Option<ContainerStateTerminated> {
    let exit = i.record.exit.as_ref()?;
    let reason = if i.start_error.is_some() {
        "StartError"
    } else if exit.oom_killed {
        "OOMKilled"
    } else if exit.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Some(ContainerStateTerminated {
        container_id: Some(container_id(&i.record.id)),
        exit_code: exit.code,
        signal: exit.signal,
        reason: Some(reason.to_owned()),
        message: i.start_error.clone(),
        started_at: Some(Time(i.record.started_at)),
        finished_at: Some(Time(exit.finished_at)),
    })
}

pub fn container_id(id: &str) -> String {
    format!("nodelet://{id}")
}

fn container_status(name: &str, image: &str, observed: &Observed) -> ContainerStatus {
    let mut mine: Vec<&Instance> = observed
        .instances
        .iter()
        .filter(|i| i.record.name == name)
        .collect();
    mine.sort_by_key(|i| i.record.attempt);
    let newest = mine.last().copied();
    let previous = mine.len().checked_sub(2).map(|i| mine[i]);
    let waiting_reason = observed.waiting.get(name);
    let waiting = |reason: &str, message: Option<&str>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: message.map(str::to_owned),
        }),
        ..Default::default()
    };
    let (state, last) = match newest {
        None => match waiting_reason {
            Some((r, m)) => (waiting(r, Some(m)), None),
            None => (waiting("ContainerCreating", None), None),
        },
        Some(i) if i.record.exit.is_none() => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(i.record.started_at)),
                }),
                ..Default::default()
            },
            previous.and_then(terminated),
        ),
        Some(i) => match waiting_reason {
            Some((r, m)) => (waiting(r, Some(m)), terminated(i)),
            None => (
                ContainerState {
                    terminated: terminated(i),
                    ..Default::default()
                },
                previous.and_then(terminated),
            ),
        },
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: observed.image_ids.get(name).cloned().unwrap_or_default(),
        container_id: newest.map(|i| container_id(&i.record.id)),
        ready: running,
        started: Some(running),
        restart_count: newest.map(|i| i.record.attempt as i32).unwrap_or(0),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's `getPhase` for pods without init containers.
pub fn phase(pod: &Pod, statuses: &[ContainerStatus]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        let last_terminated = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if last_terminated {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = pod_spec(pod).restart_policy.as_deref().unwrap_or("Always");
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// The whole status; `previous` keeps condition transition times that did not change.
pub fn pod_status(
    pod: &Pod,
    observed: &Observed,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let spec = pod_spec(pod);
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or_default(), observed))
        .collect();
    let phase = phase(pod, &statuses);
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let message =
        (!terminal).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            observed.sandbox_ready,
            None,
            None,
        ),
        condition("Initialized", true, None, None),
        condition(
            "Ready",
            unready.is_empty(),
            Some(not_ready_reason),
            message.clone(),
        ),
        condition(
            "ContainersReady",
            unready.is_empty(),
            Some(not_ready_reason),
            message,
        ),
        condition("PodScheduled", true, None, None),
    ];
    for c in &mut conditions {
        let kept = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
            })
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or(Time(now)));
    }
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        start_time: observed.start_time.map(Time),
        pod_ip: observed.pod_ip.map(|ip| ip.to_string()),
        pod_ips: observed
            .pod_ip
            .map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() }]),
        host_ip: observed.host_ip.clone(),
        host_ips: observed
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        qos_class: Some(
            match qos(spec) {
                Qos::Guaranteed => "Guaranteed",
                Qos::Burstable => "Burstable",
                Qos::BestEffort => "BestEffort",
            }
            .to_owned(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodelet_sandbox::protocol::Exit;

    fn pod(policy: &str) -> Pod {
        let yaml = format!("metadata: {{name: p, uid: u}}\nspec: {{restartPolicy: {policy}, containers: [{{name: a, image: b}}, {{name: c, image: d}}]}}");
        super::super::manifest::parse(yaml.as_bytes()).unwrap()
    }

    fn inst(name: &str, attempt: u32, exit: Option<i32>) -> Instance {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        Instance {
            record: protocol::ContainerStatus {
                id: format!("{name}{attempt}"),
                name: name.into(),
                attempt,
                pid: 7,
                started_at: t,
                exit: exit.map(|code| Exit {
                    code,
                    signal: None,
                    finished_at: t,
                    oom_killed: false,
                }),
                labels: Default::default(),
            },
            start_error: None,
        }
    }

    fn status(policy: &str, instances: Vec<Instance>, waiting: &[(&str, &str)]) -> PodStatus {
        let observed = Observed {
            instances,
            waiting: waiting
                .iter()
                .map(|(n, r)| (n.to_string(), (r.to_string(), "m".into())))
                .collect(),
            sandbox_ready: true,
            ..Default::default()
        };
        pod_status(&pod(policy), &observed, None, Timestamp::now())
    }

    #[test]
    fn phases() {
        assert_eq!(
            status("Always", vec![], &[]).phase.as_deref(),
            Some("Pending")
        );
        assert_eq!(
            status("Always", vec![inst("a", 0, None), inst("c", 0, None)], &[])
                .phase
                .as_deref(),
            Some("Running")
        );
        assert_eq!(
            status(
                "Never",
                vec![inst("a", 0, Some(0)), inst("c", 0, Some(0))],
                &[]
            )
            .phase
            .as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            status(
                "Never",
                vec![inst("a", 0, Some(0)), inst("c", 0, Some(1))],
                &[]
            )
            .phase
            .as_deref(),
            Some("Failed")
        );
        assert_eq!(
            status(
                "OnFailure",
                vec![inst("a", 0, Some(0)), inst("c", 0, Some(1))],
                &[("c", "CrashLoopBackOff")]
            )
            .phase
            .as_deref(),
            Some("Running")
        );
        assert_eq!(
            status(
                "Always",
                vec![inst("a", 0, Some(0)), inst("c", 0, None)],
                &[]
            )
            .phase
            .as_deref(),
            Some("Running")
        );
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state_and_restart_count() {
        let s = status(
            "Always",
            vec![
                inst("a", 0, Some(1)),
                inst("a", 1, Some(1)),
                inst("c", 0, None),
            ],
            &[("a", "CrashLoopBackOff")],
        );
        let a = &s.container_statuses.unwrap()[0];
        assert_eq!(a.restart_count, 1);
        assert_eq!(
            a.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = a.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        let ready = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_deref()),
            ("False", Some("containers with unready status: [a]"))
        );
    }
}
