//! The order a pod's containers run in (kubelet's `computePodActions`):
//!
//! ```text
//!  init[0] ─ exits 0 ─▶ init[1] ─ … ─▶ sidecar (started: running, startup probe passed) ─▶ …
//!        └ fails: restarted with backoff (pod restartPolicy Always/OnFailure), or the pod fails (Never)
//!  then every app container and sidecar, restarted by its policy; once the app containers are
//!  done for good (restartPolicy Never/OnFailure), the sidecars are stopped
//! ```
//!
//! Init containers run again only in a new sandbox: once an app container ran in this one, the
//! pod is initialized.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pod::build::pod_spec;
use crate::pod::status::{self, Instance, Observed, Role};

/// What the worker does in one pass.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Containers to bring to their policy (start, restart with backoff, or leave running), with
    /// the restart policy that applies to each.
    pub sync: Vec<(&'a Container, &'static str)>,
    /// Running sidecars to stop: the pod's work is done (or its initialization failed).
    pub stop: Vec<&'a Container>,
    /// Containers held back by the order (shown waiting as `PodInitializing`).
    pub waiting: Vec<String>,
}

/// The container's newest instance in the current sandbox.
pub(super) fn current<'o>(observed: &'o Observed, name: &str) -> Option<&'o Instance> {
    observed
        .instances
        .iter()
        .filter(|i| i.record.name == name && !i.previous_sandbox)
        .max_by_key(|i| i.record.attempt)
}

/// The container's newest instance in any sandbox.
pub(super) fn newest<'o>(observed: &'o Observed, name: &str) -> Option<&'o Instance> {
    observed
        .instances
        .iter()
        .filter(|i| i.record.name == name)
        .max_by_key(|i| i.record.attempt)
}

fn exit_code(i: &Instance) -> Option<i32> {
    i.record.exit.as_ref().map(|e| e.code)
}

pub fn plan<'a>(pod: &'a Pod, observed: &Observed) -> Plan<'a> {
    let spec = pod_spec(pod);
    let policy: &'static str = match spec.restart_policy.as_deref() {
        Some("Never") => "Never",
        Some("OnFailure") => "OnFailure",
        _ => "Always",
    };
    let mut plan = Plan::default();
    let sidecars: Vec<&Container> = status::containers(pod)
        .filter(|(_, r)| *r == Role::Sidecar)
        .map(|(c, _)| c)
        .collect();
    let running_sidecars = |plan: &mut Plan<'a>| {
        plan.stop = sidecars
            .iter()
            .rev()
            .copied()
            .filter(|c| current(observed, &c.name).is_some_and(Instance::running))
            .collect();
    };
    // The app containers are done for good: each exited and its policy leaves it so.
    let done = policy != "Always"
        && spec.containers.iter().all(|c| {
            newest(observed, &c.name)
                .and_then(exit_code)
                .is_some_and(|code| policy == "Never" || code == 0)
        });
    if done {
        running_sidecars(&mut plan);
        return plan;
    }
    let initialized = spec
        .containers
        .iter()
        .any(|c| current(observed, &c.name).is_some());
    let hold = |plan: &mut Plan<'a>, from: usize| {
        let all: Vec<&Container> = status::containers(pod).map(|(c, _)| c).collect();
        plan.waiting = all[from..].iter().map(|c| c.name.clone()).collect();
    };
    if !initialized {
        for (n, (c, role)) in status::containers(pod).enumerate() {
            let now = current(observed, &c.name);
            match role {
                Role::App => break,
                Role::Init => match now.map(|i| (i.running(), exit_code(i))) {
                    Some((_, Some(0))) => continue,
                    Some((true, _)) => {}
                    Some((false, _)) if policy == "Never" => {
                        // Initialization failed for good: the pod fails, nothing more runs.
                        running_sidecars(&mut plan);
                        return plan;
                    }
                    _ => {
                        let init_policy = if policy == "Never" {
                            "Never"
                        } else {
                            "OnFailure"
                        };
                        plan.sync.push((c, init_policy));
                    }
                },
                Role::Sidecar => {
                    plan.sync.push((c, "Always"));
                    let started = now.is_some_and(|i| {
                        i.running()
                            && (c.startup_probe.is_none() || observed.probes.started(&i.record.id))
                    });
                    if started {
                        continue;
                    }
                }
            }
            hold(&mut plan, n + 1);
            return plan;
        }
        // Initialization is complete: everything below runs from here on.
        plan.sync.clear();
    }
    for c in sidecars {
        plan.sync.push((c, "Always"));
    }
    for c in &spec.containers {
        plan.sync.push((c, policy));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use nodelet_sandbox::protocol::{ContainerStatus, Exit};

    fn pod(policy: &str) -> Pod {
        let yaml = format!(
            "metadata: {{name: p, uid: u}}\nspec: {{restartPolicy: {policy}, initContainers: [{{name: i1, image: b}}, {{name: side, image: b, restartPolicy: Always}}, {{name: i2, image: b}}], containers: [{{name: app, image: b}}]}}"
        );
        crate::pod::manifest::parse(yaml.as_bytes()).unwrap()
    }

    fn inst(name: &str, attempt: u32, exit: Option<i32>) -> Instance {
        Instance {
            record: ContainerStatus {
                id: format!("{name}{attempt}"),
                name: name.into(),
                attempt,
                pid: 1,
                started_at: Timestamp::UNIX_EPOCH,
                exit: exit.map(|code| Exit {
                    code,
                    signal: None,
                    finished_at: Timestamp::UNIX_EPOCH,
                    oom_killed: false,
                }),
                labels: Default::default(),
            },
            start_error: None,
            previous_sandbox: false,
        }
    }

    fn names<'a>(plan: &'a Plan<'a>) -> (Vec<&'a str>, Vec<&'a str>) {
        (
            plan.sync.iter().map(|(c, _)| c.name.as_str()).collect(),
            plan.stop.iter().map(|c| c.name.as_str()).collect(),
        )
    }

    fn observed(instances: Vec<Instance>) -> Observed {
        Observed {
            instances,
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_run_one_at_a_time_and_sidecars_stay() {
        let p = pod("Always");
        let plan = plan(&p, &observed(vec![]));
        assert_eq!(names(&plan), (vec!["i1"], vec![]));
        assert_eq!(plan.waiting, ["side", "i2", "app"]);
        // A running init container holds the rest.
        let o = observed(vec![inst("i1", 0, None)]);
        let running = plan_of(&p, &o);
        assert_eq!(names(&running), (vec![], vec![]));
        assert_eq!(running.waiting, ["side", "i2", "app"]);
        // i1 done: the sidecar starts; running (no startup probe) lets i2 go.
        let o = observed(vec![inst("i1", 0, Some(0))]);
        assert_eq!(names(&plan_of(&p, &o)), (vec!["side"], vec![]));
        let o = observed(vec![inst("i1", 0, Some(0)), inst("side", 0, None)]);
        assert_eq!(names(&plan_of(&p, &o)), (vec!["side", "i2"], vec![]));
        let o = observed(vec![
            inst("i1", 0, Some(0)),
            inst("side", 0, None),
            inst("i2", 0, Some(0)),
        ]);
        assert_eq!(names(&plan_of(&p, &o)), (vec!["side", "app"], vec![]));
        // Once the app ran, a failed init container of this sandbox is not run again.
        let o = observed(vec![
            inst("i1", 0, Some(0)),
            inst("side", 0, Some(1)),
            inst("i2", 0, Some(0)),
            inst("app", 0, None),
        ]);
        assert_eq!(names(&plan_of(&p, &o)), (vec!["side", "app"], vec![]));
    }

    fn plan_of<'a>(p: &'a Pod, o: &Observed) -> Plan<'a> {
        plan(p, o)
    }

    #[test]
    fn a_failed_init_container_follows_the_pod_policy() {
        let o = observed(vec![inst("i1", 0, Some(1))]);
        for policy in ["Always", "OnFailure"] {
            let p = pod(policy);
            let plan = plan(&p, &o);
            assert_eq!(names(&plan), (vec!["i1"], vec![]));
            assert_eq!(plan.sync[0].1, "OnFailure");
        }
        let p = pod("Never");
        assert_eq!(names(&plan(&p, &o)), (vec![], vec![]));
    }

    #[test]
    fn a_finished_pod_stops_its_sidecars_and_a_new_sandbox_initializes_again() {
        let p = pod("Never");
        let o = observed(vec![
            inst("i1", 0, Some(0)),
            inst("side", 0, None),
            inst("i2", 0, Some(0)),
            inst("app", 0, Some(0)),
        ]);
        assert_eq!(names(&plan(&p, &o)), (vec![], vec!["side"]));
        let p = pod("Always");
        let mut lost = inst("app", 0, Some(137));
        lost.previous_sandbox = true;
        let o = observed(vec![lost]);
        assert_eq!(names(&plan(&p, &o)), (vec!["i1"], vec![]));
    }
}
