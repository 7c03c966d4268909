//! Starting, restarting and replacing a pod's containers: restart policy, CrashLoopBackOff,
//! spec-hash restarts, failed starts, and pruning old instances.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use nodelet_sandbox::protocol::{self, Exit};
use tracing::{info, warn};

use super::{grace_period, hooks, namespace_name, Step, Worker, RETRY};
use crate::images::credentials::Source;
use crate::pod::build::{self, Instance as BuildInstance};
use crate::pod::status::{self, Instance, Role};

/// ConfigMaps or Secrets by name, with their data (`None`: not found).
type EnvObjects =
    std::collections::BTreeMap<String, Option<std::collections::BTreeMap<String, String>>>;

/// The least time between a stop signal sent after a preStop hook and SIGKILL (kubelet's
/// `minimumGracePeriodInSeconds`).
pub(super) const MIN_GRACE: Duration = Duration::from_secs(2);

impl Worker {
    /// Starts or restarts one container if `policy` and the backoff say so.
    pub(super) async fn sync_container(&mut self, c: &Container, policy: &str) -> Step {
        let newest = self.newest(&c.name).cloned();
        let hash = spec_hash(c);
        let changed = newest
            .as_ref()
            .is_some_and(|i| i.record.labels.get(HASH_LABEL).is_some_and(|h| *h != hash));
        // An init container or sidecar runs anew in each sandbox; an app container's newest
        // instance is its newest anywhere (a lost sandbox's exit is a restart, with backoff).
        let role = status::containers(&self.pod)
            .find(|(o, _)| o.name == c.name)
            .map_or(Role::App, |(_, r)| r);
        let decision = match (&newest, role) {
            (Some(i), Role::Init | Role::Sidecar) if i.previous_sandbox => Decision::Start {
                attempt: i.record.attempt + 1,
            },
            _ => decide(newest.as_ref(), changed, policy),
        };
        let attempt = match decision {
            Decision::Start { attempt } => attempt,
            Decision::Running { replace } => {
                self.observed.waiting.remove(&c.name);
                if let (true, Some(i)) = (replace, &newest) {
                    info!(container = %c.name, "container spec changed; restarting it");
                    let message =
                        format!("Container {} definition changed, will be restarted", c.name);
                    self.kill(c, &i.record, grace_period(&self.pod), message);
                }
                return Step::Nothing;
            }
            Decision::Stay => {
                self.observed.waiting.remove(&c.name);
                return Step::Nothing;
            }
            Decision::Restart { attempt, exited } => {
                let key = backoff_key(c);
                let now = Timestamp::now();
                if let Some(remaining) = self.backoff.remaining(&key, exited, now) {
                    let current = self.backoff.current(&key).unwrap_or_default();
                    let (ns, name) = namespace_name(&self.pod);
                    let message = format!(
                        "back-off {} restarting failed container={} pod={name}_{ns}({})",
                        humantime(current),
                        c.name,
                        self.uid
                    );
                    let (ns, pod) = namespace_name(&self.pod);
                    let event = format!(
                        "Back-off restarting failed container {} in pod {pod}_{ns}({})",
                        c.name, self.uid
                    );
                    self.wait(c, "CrashLoopBackOff", message, Some(("BackOff", event)));
                    return Step::WaitFor(remaining);
                }
                self.backoff.next(&key, exited, now);
                attempt
            }
        };
        self.start_container(c, attempt).await
    }

    /// Stops one running instance as kubelet's `killContainer` does: a `Killing` event, its
    /// preStop hook (within the grace period), its stop signal, and SIGKILL once the grace period
    /// (what the hook left of it, at least 2 s) is over. Its exit then lets the next sync restart
    /// it as its policy says.
    pub(super) fn kill(
        &mut self,
        c: &Container,
        record: &protocol::ContainerStatus,
        grace: Duration,
        message: String,
    ) {
        if !self.killing.insert(record.id.clone()) {
            return;
        }
        self.probe_tasks.stop(&record.id);
        self.event(Some(&c.name), "Killing", message, false);
        let hook = self.pre_stop(c, record);
        let signal = stop_signal(record);
        let (runtime, uid, id) = (
            self.node.runtime.clone(),
            self.uid.clone(),
            record.id.clone(),
        );
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let mut grace = grace;
            if let Some(hook) = hook {
                let _ = tokio::time::timeout(grace, hook).await;
                grace = grace.saturating_sub(began.elapsed()).max(MIN_GRACE);
            }
            for (signal, wait) in [(signal, grace), (libc::SIGKILL, Duration::ZERO)] {
                // A shim that did not answer is asked again (a kill must not be lost to a
                // hiccup); one that answered no (the instance has exited) or is gone is done.
                let mut tries = 0;
                loop {
                    match runtime.signal(&uid, &id, signal).await {
                        Ok(()) => break,
                        Err(crate::runtime::Error::Shim { .. }) => return,
                        Err(_) if tries == 10 => return,
                        Err(_)
                            if runtime.liveness(&uid).await == crate::runtime::Liveness::Gone =>
                        {
                            return
                        }
                        Err(_) => tries += 1,
                    }
                    tokio::time::sleep(RETRY).await;
                }
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The container's image, pulled as its `imagePullPolicy` says (kubelet's image manager):
    /// Never uses only what the node has, IfNotPresent pulls when missing, Always pulls every
    /// time; failures show as ErrImagePull, then ImagePullBackOff while the back-off runs.
    async fn ensure_image(&mut self, c: &Container) -> Result<crate::images::Image, Step> {
        let name = c.image.clone().unwrap_or_default();
        let reference = crate::images::Reference::parse(&name).map_err(|e| {
            self.observed
                .waiting
                .insert(c.name.clone(), ("InvalidImageName".into(), e.to_string()));
            Step::WaitFor(RETRY)
        })?;
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| reference.default_pull_policy().to_owned());
        let present = self.node.images.resolve(&name).ok();
        match (policy.as_str(), present) {
            ("Never" | "IfNotPresent", Some(image)) => {
                let message = format!("Container image \"{name}\" already present on machine");
                self.event(Some(&c.name), "Pulled", message, false);
                return Ok(image);
            }
            ("Never", None) => {
                let message =
                    format!("Container image \"{name}\" is not present with pull policy of Never");
                let event = message.clone();
                self.wait(
                    c,
                    "ErrImageNeverPull",
                    message,
                    Some(("ErrImageNeverPull", event)),
                );
                return Err(Step::WaitFor(RETRY));
            }
            _ => {}
        }
        let key = format!("pull_{name}");
        let now = Timestamp::now();
        if let Some(remaining) = self.backoff.remaining_since_update(&key, now) {
            let message = format!("Back-off pulling image \"{name}\"");
            let event = message.clone();
            self.wait(c, "ImagePullBackOff", message, Some(("BackOff", event)));
            return Err(Step::WaitFor(remaining));
        }
        self.event(
            Some(&c.name),
            "Pulling",
            format!("Pulling image \"{name}\""),
            false,
        );
        let started = std::time::Instant::now();
        let secrets = self.pull_secrets(c).await;
        match self.node.puller.pull(&name, &secrets).await {
            Ok(image) => {
                let took = started.elapsed().as_secs_f64();
                let message = format!("Successfully pulled image \"{name}\" in {took:.3}s");
                self.event(Some(&c.name), "Pulled", message, false);
                self.node.image_gc.notify_one();
                Ok(image)
            }
            Err(e) => {
                self.backoff.next(&key, now, Timestamp::now());
                let message = format!(
                    "failed to pull image \"{name}\": {}",
                    crate::error_chain(&e)
                );
                warn!(container = %c.name, error = %message, "image pull failed");
                self.event(
                    Some(&c.name),
                    "Failed",
                    format!(
                        "Failed to pull image \"{name}\": {}",
                        crate::error_chain(&e)
                    ),
                    true,
                );
                self.wait(
                    c,
                    "ErrImagePull",
                    message,
                    Some(("Failed", "Error: ErrImagePull".into())),
                );
                // Looked at again soon, inside the back-off: the status then says
                // ImagePullBackOff until it ends, as kubelet's requeue after an error shows it.
                Err(Step::WaitFor(RETRY))
            }
        }
    }

    /// The pod's `imagePullSecrets` that hold registry credentials (types
    /// `kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`), read from the API server
    /// at each pull as kubelet does. Static pods have none: they may not refer to API objects.
    async fn pull_secrets(&self, c: &Container) -> Vec<Source> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let from_file = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.source"))
            .is_some_and(|s| s == "file");
        let Some(client) = self
            .node
            .api
            .get()
            .filter(|_| !names.is_empty() && !from_file)
        else {
            return Vec::new();
        };
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), namespace);
        let mut sources = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let secret = match api.get(&name).await {
                Ok(secret) => secret,
                Err(e) => {
                    warn!(secret = %name, error = %e, "image pull secret");
                    missing.push(format!("\"{name}\""));
                    continue;
                }
            };
            let key = match secret.type_.as_deref() {
                Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
                Some("kubernetes.io/dockercfg") => ".dockercfg",
                _ => continue,
            };
            if let Some(data) = secret.data.as_ref().and_then(|d| d.get(key)) {
                sources.push(Source::Secret {
                    name: format!("{namespace}/{name}"),
                    data: data.0.clone(),
                });
            }
        }
        if !missing.is_empty() {
            self.event(
                Some(&c.name),
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
                true,
            );
        }
        sources
    }

    /// The ConfigMaps and Secrets the container's environment names, read from the API server
    /// at each start as kubelet's managers read them (`None` for one that does not exist).
    async fn env_objects(&self, c: &Container) -> Result<(EnvObjects, EnvObjects), String> {
        use crate::pod::objects::{Key, Kind};
        let (maps, secrets) = build::env_sources(c);
        if maps.is_empty() && secrets.is_empty() {
            return Ok(Default::default());
        }
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let Some(client) = self.node.api.get() else {
            let what = maps
                .first()
                .map(|m| format!("ConfigMap {namespace}/{m}"))
                .or(secrets.first().map(|s| format!("Secret {namespace}/{s}")))
                .unwrap_or_default();
            return Err(format!(
                "the environment of container {} refers to {what}, and the node has no API server to read it from",
                c.name
            ));
        };
        let read = |kind, names: Vec<String>| async move {
            let mut found = EnvObjects::new();
            for name in names {
                let key = Key {
                    kind,
                    namespace: namespace.to_owned(),
                    name,
                };
                let object = self.node.objects.get(client, &key).await?;
                found.insert(key.name, object.map(|o| o.env(kind)));
            }
            Ok::<_, String>(found)
        };
        let found_maps = read(Kind::ConfigMap, maps).await?;
        let found_secrets = read(Kind::Secret, secrets).await?;
        Ok((found_maps, found_secrets))
    }

    /// Records why a container waits; the event, if any, is recorded when the reason is new
    /// (not on every sync that finds it still waiting).
    fn wait(
        &mut self,
        c: &Container,
        reason: &str,
        message: String,
        event: Option<(&'static str, String)>,
    ) {
        let previous = self
            .observed
            .waiting
            .insert(c.name.clone(), (reason.to_owned(), message));
        if previous.is_none_or(|(r, _)| r != reason) {
            if let Some((event_reason, event_message)) = event {
                self.event(Some(&c.name), event_reason, event_message, true);
            }
        }
    }

    /// The running instance an ephemeral container's `targetContainerName` names, whose PID
    /// namespace it joins.
    fn target_of(&self, name: &str) -> Result<Option<String>, String> {
        let spec = build::pod_spec(&self.pod);
        let Some(target) = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.target_container_name.as_deref())
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        match self.current(target).filter(|i| i.running()) {
            Some(i) => Ok(Some(i.record.id.clone())),
            None => Err(format!("target container {target:?} is not running")),
        }
    }

    /// What the downward API and the environment read of the node for this pod; the node's
    /// allocatable amounts only when a `resourceFieldRef` may need them (not on every start).
    pub(super) fn facts(&self, with_allocatable: bool) -> build::Facts {
        let (allocatable_millicpu, allocatable_memory, allocatable_storage) = if with_allocatable {
            build::node_allocatable(&self.node.ctx.paths.root)
        } else {
            (0, 0, 0)
        };
        build::Facts {
            pod_ip: self.observed.pod_ip.map(|ip| ip.to_string()),
            host_ip: self.observed.host_ip.clone(),
            allocatable_millicpu,
            allocatable_memory,
            allocatable_storage,
            api_service: self.node.ctx.api_service.get().copied(),
            ..Default::default()
        }
    }

    fn newest(&self, name: &str) -> Option<&Instance> {
        super::order::newest(&self.observed, name)
    }

    async fn start_container(&mut self, c: &Container, attempt: u32) -> Step {
        let image = match self.ensure_image(c).await {
            Ok(image) => image,
            Err(step) => return step,
        };
        self.node.images.touch(&image.digest);
        let image_id = crate::images::Reference::parse(&image.reference)
            .map(|r| r.by_digest(&image.digest))
            .unwrap_or_else(|_| format!("{}@{}", image.reference, image.digest));
        self.observed.image_ids.insert(c.name.clone(), image_id);
        let id = crate::random_hex(32);
        let asks = c.env.iter().flatten().any(|v| {
            v.value_from
                .as_ref()
                .is_some_and(|f| f.resource_field_ref.is_some())
        });
        let (config_maps, secrets) = match self.env_objects(c).await {
            Ok(found) => found,
            Err(message) => {
                self.observed.waiting.insert(
                    c.name.clone(),
                    ("CreateContainerConfigError".into(), message),
                );
                return Step::WaitFor(RETRY);
            }
        };
        let facts = build::Facts {
            config_maps,
            secrets,
            ..self.facts(asks)
        };
        let inst = BuildInstance {
            pod: &self.pod,
            container: c,
            image: &image,
            id: &id,
            attempt,
            facts: &facts,
        };
        let target = match self.target_of(&c.name) {
            Ok(target) => target,
            Err(message) => {
                let reason = ("CreateContainerError".into(), message);
                self.observed.waiting.insert(c.name.clone(), reason);
                return Step::WaitFor(RETRY);
            }
        };
        let mut spec = match build::container_spec(&self.node.ctx, &inst) {
            Ok(spec) => nodelet_sandbox::spec::ContainerSpec { target, ..spec },
            Err(e) => {
                self.observed
                    .waiting
                    .insert(c.name.clone(), ("CreateContainerConfigError".into(), e.0));
                return Step::WaitFor(RETRY);
            }
        };
        spec.labels.insert(HASH_LABEL.to_owned(), spec_hash(c));
        if let Some(signal) = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
        {
            spec.labels.insert(STOP_SIGNAL_LABEL.to_owned(), signal);
        }
        let dir = self.node.ctx.paths.container_dir(&self.uid, &id);
        for sub in ["upper", "work", "rootfs"] {
            if let Err(e) = std::fs::create_dir_all(dir.join(sub)) {
                self.observed.waiting.insert(
                    c.name.clone(),
                    (
                        "CreateContainerError".into(),
                        format!("create {}: {e}", dir.display()),
                    ),
                );
                return Step::WaitFor(RETRY);
            }
        }
        // What `kubectl exec` runs with: the container's user, capabilities and environment.
        let process = serde_json::to_vec(&spec.process).expect("serialise process spec");
        if let Err(e) = crate::write_private(&dir.join("process.json"), &process) {
            self.observed.waiting.insert(
                c.name.clone(),
                (
                    "CreateContainerError".into(),
                    format!("write {}: {e}", dir.join("process.json").display()),
                ),
            );
            return Step::WaitFor(RETRY);
        }
        if let Err(e) = hooks::termination_log(&self.node.ctx.paths, &self.uid, &id) {
            self.observed.waiting.insert(
                c.name.clone(),
                (
                    "CreateContainerError".into(),
                    format!("create the termination log: {e}"),
                ),
            );
            return Step::WaitFor(RETRY);
        }
        let creating = std::time::Instant::now();
        let result = self.node.runtime.create(&self.uid, spec).await;
        tracing::debug!(
            micros = creating.elapsed().as_micros() as u64,
            "runtime create"
        );
        self.prune(&c.name, attempt).await;
        match result {
            Ok(pid) => {
                info!(container = %c.name, attempt, "container started");
                let (ns, pod) = namespace_name(&self.pod);
                let paths = &self.node.ctx.paths;
                let log = paths.container_log(ns, pod, &self.uid, &c.name, attempt);
                if let Err(e) = crate::pod::loglinks::link(paths, ns, pod, &c.name, &id, &log) {
                    warn!(container = %c.name, error = %e, "link the log into {}", paths.container_logs.display());
                }
                self.event(
                    Some(&c.name),
                    "Created",
                    format!("Created container: {}", c.name),
                    false,
                );
                self.event(
                    Some(&c.name),
                    "Started",
                    format!("Started container {}", c.name),
                    false,
                );
                self.observed.waiting.remove(&c.name);
                self.failed_starts.remove(&c.name);
                self.post_start(c, &id, pid, attempt).await
            }
            Err(e) => {
                let message = match e {
                    crate::runtime::Error::Shim { message, .. } => message,
                    other => crate::error_chain(&other),
                };
                warn!(container = %c.name, error = %message, "container failed to start");
                self.event(Some(&c.name), "Failed", format!("Error: {message}"), true);
                let _ = std::fs::remove_dir_all(&dir);
                let now = Timestamp::now();
                let record = protocol::ContainerStatus {
                    id,
                    name: c.name.clone(),
                    attempt,
                    pid: 0,
                    started_at: now,
                    exit: Some(Exit {
                        code: 128,
                        signal: None,
                        finished_at: now,
                        oom_killed: false,
                    }),
                    labels: [(HASH_LABEL.to_owned(), spec_hash(c))].into(),
                };
                self.failed_starts.insert(
                    c.name.clone(),
                    Instance {
                        record,
                        start_error: Some(message.clone()),
                        previous_sandbox: false,
                    },
                );
                self.observed
                    .waiting
                    .insert(c.name.clone(), ("RunContainerError".into(), message));
                Step::WaitFor(Duration::ZERO)
            }
        }
    }

    /// Keeps the newest two instances of a container (kubelet shows state and lastState), drops
    /// older records, root filesystems of exited instances and logs older than the previous one.
    async fn prune(&mut self, name: &str, newest_attempt: u32) {
        let (ns, pod_name) = namespace_name(&self.pod);
        let paths = self.node.ctx.paths.clone();
        let old: Vec<Instance> = self
            .observed
            .instances
            .iter()
            .filter(|i| {
                i.record.name == name
                    && i.record.attempt < newest_attempt
                    && i.record.exit.is_some()
            })
            .cloned()
            .collect();
        for i in old {
            let _ = std::fs::remove_dir_all(paths.container_dir(&self.uid, &i.record.id));
            if i.record.attempt + 1 < newest_attempt {
                let _ =
                    std::fs::remove_file(hooks::termination_path(&paths, &self.uid, &i.record.id));
                self.observed.messages.remove(&i.record.id);
                let _ = self.node.runtime.remove(&self.uid, &i.record.id).await;
                let log = paths.container_log(ns, pod_name, &self.uid, name, i.record.attempt);
                let _ = std::fs::remove_file(log);
                crate::pod::loglinks::unlink(&paths, ns, pod_name, name, &i.record.id);
            }
        }
    }
}

/// What one container needs, from its newest instance (kubelet's `computePodActions`, for one
/// container).
#[derive(Debug, PartialEq)]
enum Decision {
    /// Nothing runs yet, or the spec changed: start this attempt now.
    Start { attempt: u32 },
    /// It runs; `replace` when its spec changed (stopped, then started anew).
    Running { replace: bool },
    /// It exited and its policy restarts it: this attempt, once the backoff from `exited` allows.
    Restart { attempt: u32, exited: Timestamp },
    /// It exited and its policy leaves it so.
    Stay,
}

fn decide(newest: Option<&Instance>, changed: bool, policy: &str) -> Decision {
    let Some(i) = newest else {
        return Decision::Start { attempt: 0 };
    };
    let Some(exit) = &i.record.exit else {
        return Decision::Running { replace: changed };
    };
    let attempt = i.record.attempt + 1;
    // kubelet: "Container spec hash changed, will be restarted", whatever the policy.
    if changed {
        return Decision::Start { attempt };
    }
    let restart = match policy {
        "Never" => false,
        "OnFailure" => exit.code != 0,
        _ => true,
    };
    if restart {
        Decision::Restart {
            attempt,
            exited: exit.finished_at,
        }
    } else {
        Decision::Stay
    }
}

/// The CRI label under which each instance keeps the hash of the spec it was made from.
const HASH_LABEL: &str = "io.kubernetes.container.hash";

/// The image's `StopSignal`, kept with the instance for when it is stopped.
const STOP_SIGNAL_LABEL: &str = "nodelet.io/stop-signal";

/// The signal that asks an instance to stop: its image's (`SIGQUIT`, `QUIT` or `3`) or SIGTERM.
pub fn stop_signal(c: &protocol::ContainerStatus) -> i32 {
    let Some(name) = c.labels.get(STOP_SIGNAL_LABEL) else {
        return libc::SIGTERM;
    };
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.trim()
        .parse::<i32>()
        .ok()
        .or_else(|| {
            full.parse::<nix::sys::signal::Signal>()
                .ok()
                .map(|s| s as i32)
        })
        .unwrap_or(libc::SIGTERM)
}

/// A hash of a container's spec: a change restarts the container and its backoff curve.
fn spec_hash(c: &Container) -> String {
    crate::short_hash(&serde_json::to_vec(c).unwrap_or_default())
}

/// kubelet's stable key: a changed container spec starts a fresh backoff curve.
fn backoff_key(c: &Container) -> String {
    format!("{}_{}", c.name, spec_hash(c))
}

/// Go's Duration.String for whole seconds and minutes, as kubelet's message prints it ("40s", "5m0s").
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(signal: Option<&str>) -> protocol::ContainerStatus {
        protocol::ContainerStatus {
            id: "x".into(),
            name: "c".into(),
            attempt: 0,
            pid: 1,
            started_at: Timestamp::now(),
            exit: None,
            labels: signal
                .map(|s| [(STOP_SIGNAL_LABEL.to_owned(), s.to_owned())].into())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn stop_signal_from_the_image_in_any_spelling() {
        assert_eq!(stop_signal(&record(None)), libc::SIGTERM);
        assert_eq!(stop_signal(&record(Some("SIGQUIT"))), libc::SIGQUIT);
        assert_eq!(stop_signal(&record(Some("int"))), libc::SIGINT);
        assert_eq!(stop_signal(&record(Some("10"))), 10);
        assert_eq!(stop_signal(&record(Some("SIGNOPE"))), libc::SIGTERM);
    }

    #[test]
    fn go_style_back_off_durations() {
        assert_eq!(humantime(Duration::from_secs(40)), "40s");
        assert_eq!(humantime(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn restart_decisions_follow_the_policy_and_the_spec_hash() {
        let at = Timestamp::UNIX_EPOCH;
        let instance = |attempt: u32, exit_code: Option<i32>| Instance {
            record: protocol::ContainerStatus {
                attempt,
                exit: exit_code.map(|code| Exit {
                    code,
                    signal: None,
                    finished_at: at,
                    oom_killed: false,
                }),
                ..record(None)
            },
            start_error: None,
            previous_sandbox: false,
        };
        assert_eq!(
            decide(None, false, "Always"),
            Decision::Start { attempt: 0 }
        );
        let running = instance(2, None);
        assert_eq!(
            decide(Some(&running), false, "Never"),
            Decision::Running { replace: false }
        );
        assert_eq!(
            decide(Some(&running), true, "Never"),
            Decision::Running { replace: true }
        );
        let (ok, failed) = (instance(2, Some(0)), instance(2, Some(1)));
        let restart = Decision::Restart {
            attempt: 3,
            exited: at,
        };
        for (policy, exited, want) in [
            ("Always", &ok, &restart),
            ("Always", &failed, &restart),
            ("OnFailure", &ok, &Decision::Stay),
            ("OnFailure", &failed, &restart),
            ("Never", &ok, &Decision::Stay),
            ("Never", &failed, &Decision::Stay),
        ] {
            assert_eq!(&decide(Some(exited), false, policy), want, "{policy}");
            // A changed spec starts again at once, whatever the policy, without backoff.
            assert_eq!(
                decide(Some(exited), true, policy),
                Decision::Start { attempt: 3 }
            );
        }
    }
}
