//! Pod status as kubelet computes it: container states from the newest two instances of each
//! container, phase by `getPhase`, and the kubelet-owned conditions (runtime-defaults.md §8).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_sandbox::protocol;

use super::build::{pod_spec, qos};

/// One container instance as the agent knows it: the shim's record, or a start that failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub record: protocol::ContainerStatus,
    /// Set when the runtime could not start the instance (containerd's `StartError`, exit 128).
    pub start_error: Option<String>,
    /// It ran in an earlier sandbox of the pod, which was lost.
    pub previous_sandbox: bool,
}

impl Instance {
    pub fn running(&self) -> bool {
        self.record.exit.is_none()
    }
}

/// The pod conditions kubelet owns; any other is another controller's, kept as it is.
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// What a container is to its pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    /// Runs to completion, in order, before the app containers.
    Init,
    /// An init container with `restartPolicy: Always`: started in order, then kept running.
    Sidecar,
    App,
}

pub fn role_of_init(c: &Container) -> Role {
    if c.restart_policy.as_deref() == Some("Always") {
        Role::Sidecar
    } else {
        Role::Init
    }
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
    /// Probe results by instance id: readiness, and whether the startup probe has succeeded.
    pub probes: super::probe::Results,
    /// Termination messages by instance id.
    pub messages: HashMap<String, String>,
    /// Why the node refused the pod (kubelet's admission): (reason, message).
    pub rejected: Option<(String, String)>,
    /// Why the node ended the pod while it ran (`activeDeadlineSeconds`): (reason, message).
    /// Its containers are stopped, none is started again, and it is `Failed`.
    pub failed: Option<(String, String)>,
}

fn terminated(i: &Instance, message: Option<&String>) -> Option<ContainerStateTerminated> {
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
        message: match (i.start_error.clone(), message.filter(|m| !m.is_empty())) {
            (Some(e), Some(m)) => Some(format!("{e}: {m}")),
            (e, m) => e.or(m.cloned()),
        },
        started_at: Some(Time(i.record.started_at)),
        finished_at: Some(Time(exit.finished_at)),
    })
}

pub fn container_id(id: &str) -> String {
    format!("nodelet://{id}")
}

/// The runtime's id in a status's `containerID` (`container_id`'s inverse).
pub fn runtime_id(container_id: &str) -> Option<&str> {
    container_id.strip_prefix("nodelet://")
}

/// A container's status by name, among the app, init and ephemeral containers'.
pub fn find<'a>(status: &'a PodStatus, name: &str) -> Option<&'a ContainerStatus> {
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .chain(status.ephemeral_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

fn container_status(
    c: &Container,
    role: Role,
    default_waiting: &str,
    observed: &Observed,
) -> ContainerStatus {
    let name = c.name.as_str();
    let mut mine: Vec<&Instance> = observed
        .instances
        .iter()
        .filter(|i| i.record.name == name)
        .collect();
    mine.sort_by_key(|i| i.record.attempt);
    let newest = mine.last().copied();
    let previous = mine.len().checked_sub(2).map(|i| mine[i]);
    let terminated = |i: &Instance| terminated(i, observed.messages.get(&i.record.id));
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
            Some((r, m)) => (waiting(r, Some(m.as_str()).filter(|m| !m.is_empty())), None),
            None => (waiting(default_waiting, None), None),
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
            Some((r, m)) => (
                waiting(r, Some(m.as_str()).filter(|m| !m.is_empty())),
                terminated(i),
            ),
            None => (
                ContainerState {
                    terminated: terminated(i),
                    ..Default::default()
                },
                previous.and_then(terminated),
            ),
        },
    };
    // kubelet's prober manager: started once the startup probe succeeded (or at once without
    // one); ready once started and the readiness probe succeeded (or at once without one). A
    // completed init container is ready.
    let running = newest.filter(|i| state.running.is_some() && i.running());
    let started =
        running.is_some_and(|i| c.startup_probe.is_none() || observed.probes.started(&i.record.id));
    let ready = match (role, running) {
        (Role::Init, _) => state.terminated.as_ref().is_some_and(|t| t.exit_code == 0),
        (_, Some(i)) => {
            started && (c.readiness_probe.is_none() || observed.probes.ready(&i.record.id))
        }
        (_, None) => false,
    };
    ContainerStatus {
        name: name.to_owned(),
        image: c.image.clone().unwrap_or_default(),
        image_id: observed.image_ids.get(name).cloned().unwrap_or_default(),
        container_id: newest.map(|i| container_id(&i.record.id)),
        ready,
        started: Some(started),
        restart_count: newest.map(|i| i.record.attempt as i32).unwrap_or(0),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn last_terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.last_state.as_ref().and_then(|l| l.terminated.as_ref())
}

fn state(s: &ContainerStatus) -> ContainerState {
    s.state.clone().unwrap_or_default()
}

/// kubelet's `getPhase`: init containers pending or failed, then the app containers (and the
/// running sidecars) by state.
///
/// `initialized`: an app container has run in the current sandbox (kubelet's
/// `HasAnyActiveRegularContainerStarted`).
pub fn phase(
    pod: &Pod,
    init: &[ContainerStatus],
    statuses: &[ContainerStatus],
    initialized: bool,
) -> &'static str {
    let spec = pod_spec(pod);
    let (mut pending_init, mut pending_sidecars, mut failed_init) = (0, 0, 0);
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in spec.init_containers.iter().flatten() {
        let Some(s) = init.iter().find(|s| s.name == c.name) else {
            match role_of_init(c) {
                Role::Init => pending_init += 1,
                _ => unknown += 1,
            }
            continue;
        };
        let st = state(s);
        match role_of_init(c) {
            Role::Init => {
                if st.running.is_some() {
                    pending_init += 1;
                } else if let Some(t) = &st.terminated {
                    if t.exit_code != 0 {
                        failed_init += 1;
                    }
                } else if st.waiting.is_some() {
                    match last_terminated(s) {
                        Some(t) if t.exit_code != 0 => failed_init += 1,
                        Some(_) => {}
                        None => pending_init += 1,
                    }
                } else {
                    pending_init += 1;
                }
            }
            _ => {
                // A terminated sidecar does not count towards the phase.
                if st.running.is_some() {
                    if s.started != Some(true) {
                        pending_sidecars += 1;
                    }
                    running += 1;
                } else if st.terminated.is_some() {
                } else if st.waiting.is_some() {
                    if last_terminated(s).is_none() {
                        pending_sidecars += 1;
                        waiting += 1;
                    }
                } else {
                    pending_sidecars += 1;
                    unknown += 1;
                }
            }
        }
    }
    for s in statuses {
        let st = state(s);
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st.waiting.is_some() {
            if last_terminated(s).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || (pending_sidecars > 0 && !initialized) || waiting > 0 {
        "Pending"
    } else if running > 0 && unknown == 0 {
        "Running"
    } else if running == 0 && stopped > 0 && unknown == 0 {
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

/// Every container of the pod with its role: init containers (and sidecars) first, in order.
pub fn containers(pod: &Pod) -> impl Iterator<Item = (&Container, Role)> {
    let spec = pod_spec(pod);
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, role_of_init(c)))
        .chain(spec.containers.iter().map(|c| (c, Role::App)))
}

/// The whole status; `previous` keeps condition transition times that did not change.
pub fn pod_status(
    pod: &Pod,
    observed: &Observed,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let spec = pod_spec(pod);
    if let Some((reason, message)) = &observed.rejected {
        // kubelet's rejectPod: Failed, with the reason and message, and nothing else run.
        return PodStatus {
            phase: Some("Failed".into()),
            reason: Some(reason.clone()),
            message: Some(message.clone()),
            host_ip: observed.host_ip.clone(),
            qos_class: Some(super::build::qos(spec).as_str().to_owned()),
            ..Default::default()
        };
    }
    let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
    let default_waiting = if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let status_of =
        |(c, role): (&Container, Role)| container_status(c, role, default_waiting, observed);
    let init: Vec<ContainerStatus> = containers(pod)
        .filter(|(_, r)| *r != Role::App)
        .map(status_of)
        .collect();
    let statuses: Vec<ContainerStatus> = containers(pod)
        .filter(|(_, r)| *r == Role::App)
        .map(status_of)
        .collect();
    let active = spec.containers.iter().any(|c| {
        observed
            .instances
            .iter()
            .any(|i| i.record.name == c.name && !i.previous_sandbox)
    });
    let phase = match &observed.failed {
        Some(_) => "Failed",
        None => phase(pod, &init, &statuses, active),
    };
    // GeneratePodInitializedCondition: every init container done (sidecars started), or an
    // app container running or terminated.
    let app_started = statuses.iter().any(|s| {
        s.state
            .as_ref()
            .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
    });
    let incomplete: Vec<&str> = containers(pod)
        .zip(init.iter())
        .filter(|((_, role), s)| match role {
            Role::Sidecar => s.started != Some(true),
            _ => state(s).terminated.is_none_or(|t| t.exit_code != 0),
        })
        .map(|(_, s)| s.name.as_str())
        .collect();
    let initialized = phase == "Succeeded" || app_started || incomplete.is_empty();
    let terminal = phase == "Succeeded" || phase == "Failed";
    // Sidecars count towards readiness (ContainersReady), before the app containers.
    let unready: Vec<&str> = containers(pod)
        .zip(init.iter().chain(statuses.iter()))
        .filter(|((_, role), s)| *role != Role::Init && !s.ready)
        .map(|(_, s)| s.name.as_str())
        .collect();
    let (reason, message) = if terminal {
        (
            if phase == "Succeeded" {
                "PodCompleted"
            } else {
                "PodFailed"
            },
            None,
        )
    } else if !initialized {
        (
            "ContainersNotInitialized",
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let containers_ready = initialized && unready.is_empty();
    // Readiness gates: conditions other controllers set on the pod (kubelet's
    // GeneratePodReadyCondition), kept in the status the node reports.
    let external: Vec<PodCondition> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    let gates: Vec<String> = spec
        .readiness_gates
        .iter()
        .flatten()
        .filter_map(
            |g| match external.iter().find(|c| c.type_ == g.condition_type) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {:?} does not exist.",
                    g.condition_type
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {:?} is not \"True\", but {}",
                    g.condition_type, c.status
                )),
                Some(_) => None,
            },
        )
        .collect();
    let ready = containers_ready && gates.is_empty();
    let (ready_reason, ready_message) = if containers_ready && !gates.is_empty() {
        ("ReadinessGatesNotReady", Some(gates.join(", ")))
    } else {
        (reason, message.clone())
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            observed.sandbox_ready,
            None,
            None,
        ),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        ),
        condition("Ready", ready, Some(ready_reason), ready_message),
        condition("ContainersReady", containers_ready, Some(reason), message),
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
    conditions.extend(external);
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: has_init.then_some(init),
        ephemeral_container_statuses: spec.ephemeral_containers.as_ref().map(|list| {
            list.iter()
                .map(|e| {
                    let c = super::build::ephemeral_container(e);
                    container_status(&c, Role::App, "ContainerCreating", observed)
                })
                .collect()
        }),
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
        qos_class: Some(qos(spec).as_str().to_owned()),
        reason: observed.failed.as_ref().map(|f| f.0.clone()),
        message: observed.failed.as_ref().map(|f| f.1.clone()),
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
            previous_sandbox: false,
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

    #[test]
    fn init_containers_gate_initialized_and_readiness_gates_gate_ready() {
        let yaml = "metadata: {name: p, uid: u}\nspec: {readinessGates: [{conditionType: example.com/lb}], initContainers: [{name: i, image: b}, {name: s, image: b, restartPolicy: Always}], containers: [{name: a, image: d}]}\nstatus: {conditions: [{type: example.com/lb, status: 'False'}]}";
        let p = super::super::manifest::parse(yaml.as_bytes()).unwrap();
        let observed = |instances: Vec<Instance>| Observed {
            instances,
            sandbox_ready: true,
            ..Default::default()
        };
        let cond = |s: &PodStatus, kind: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == kind)
                .cloned()
                .unwrap()
        };
        let s = pod_status(
            &p,
            &observed(vec![inst("i", 0, None)]),
            None,
            Timestamp::now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let init = cond(&s, "Initialized");
        assert_eq!(init.status, "False");
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [i s]")
        );
        let app = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = app.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("PodInitializing"));
        let running = vec![
            inst("i", 0, Some(0)),
            inst("s", 0, None),
            inst("a", 0, None),
        ];
        let s = pod_status(&p, &observed(running), None, Timestamp::now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ReadinessGatesNotReady"))
        );
        // The gate's condition, another controller's, is kept in the status.
        assert_eq!(cond(&s, "example.com/lb").status, "False");
        let side = &s.init_container_statuses.as_ref().unwrap()[1];
        assert_eq!((side.ready, side.started), (true, Some(true)));
    }
}
