//! One worker per pod UID (kubelet's `podWorkers`): it owns the pod's sandbox and containers and
//! drives them towards the newest desired state.
//!
//! ```text
//!  update ──▶ watch slot (newest wins) ──▶ worker: sync ─┬─▶ ensure sandbox (shim)
//!  shim exit event ───────────────────────────────────▶ │   start / restart containers (backoff)
//!  timer (backoff expiry, 10 s resync) ───────────────▶ └─▶ publish status
//!  Delete{grace} ──▶ SIGTERM all ─▶ wait ≤ grace (only shrinks) ─▶ SIGKILL ─▶ teardown ─▶ gone
//! ```
//!
//! The worker never replays stale states: it reads only the newest desired state when it wakes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_sandbox::protocol::{self, Exit, Request, Response};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use super::backoff::Backoff;
use super::build::{self, pod_spec, pod_uid, Instance as BuildInstance};
use super::status::{self, Instance, Observed};
use crate::network;
use crate::node::Node;
use crate::runtime::ShimEvents;

const RESYNC: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
/// How long after SIGKILL to wait for exits before tearing the sandbox down anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Desired {
    Run(Arc<Pod>),
    /// Delete the pod, allowing at most this grace period (it only ever shrinks).
    Delete {
        grace: Option<Duration>,
    },
}

/// What one container's sync did.
enum Step {
    Nothing,
    Started,
    /// Look again after this long (a backoff or a retry).
    WaitFor(Duration),
}

pub struct WorkerHandle {
    pub tx: watch::Sender<Desired>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the pod's worker; when it ends (the pod deleted), its UID is sent on `done`.
pub fn spawn(
    node: Arc<Node>,
    pod: Arc<Pod>,
    adopted: bool,
    done: mpsc::UnboundedSender<String>,
) -> WorkerHandle {
    let (tx, rx) = watch::channel(Desired::Run(pod.clone()));
    let span = tracing::info_span!(
        "pod",
        pod_uid = %pod_uid(&pod),
        namespace = pod.metadata.namespace.as_deref().unwrap_or("default"),
        name = pod.metadata.name.as_deref().unwrap_or_default()
    );
    let host_ip = node.config.node_ip.clone();
    let worker = Worker {
        node,
        uid: pod_uid(&pod).to_owned(),
        pod,
        sandbox_ready: false,
        adopted,
        events: None,
        observed: Observed {
            host_ip,
            ..Observed::default()
        },
        failed_starts: HashMap::new(),
        backoff: Backoff::default(),
        status: None,
        replacing: Default::default(),
    };
    let uid = worker.uid.clone();
    let task = tokio::spawn(
        async move {
            worker.run(rx).await;
            let _ = done.send(uid);
        }
        .instrument(span),
    );
    WorkerHandle { tx, task }
}

struct Worker {
    node: Arc<Node>,
    uid: String,
    pod: Arc<Pod>,
    sandbox_ready: bool,
    /// The shim may already run (found at agent start): use it instead of starting one.
    adopted: bool,
    events: Option<ShimEvents>,
    observed: Observed,
    /// Starts that failed, kept as instances so restart counts and backoff include them.
    failed_starts: HashMap<String, Instance>,
    backoff: Backoff,
    status: Option<PodStatus>,
    /// Running instances being stopped because their spec changed.
    replacing: std::collections::HashSet<String>,
}

/// Waits for the next line from the shim's event stream; forever when there is none.
async fn next_event(events: &mut Option<ShimEvents>) -> bool {
    match events {
        Some(lines) => match lines.next_line().await {
            Ok(Some(_)) => true,
            _ => {
                *events = None;
                true
            }
        },
        None => std::future::pending().await,
    }
}

impl Worker {
    async fn run(mut self, mut rx: watch::Receiver<Desired>) {
        loop {
            let desired = rx.borrow_and_update().clone();
            let wake = match desired {
                Desired::Run(pod) => {
                    self.update(pod);
                    self.sync().await
                }
                Desired::Delete { grace } => {
                    self.terminate(grace, &mut rx).await;
                    return;
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = next_event(&mut self.events) => {}
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Takes a newer spec, keeping what the node first recorded (creation time).
    fn update(&mut self, pod: Arc<Pod>) {
        if Arc::ptr_eq(&pod, &self.pod) {
            return;
        }
        let mut pod = (*pod).clone();
        pod.metadata.creation_timestamp = self.pod.metadata.creation_timestamp.clone();
        self.pod = Arc::new(pod);
    }

    /// One pass towards the desired state; returns when to look again at the latest.
    async fn sync(&mut self) -> Duration {
        let mut wake = RESYNC;
        if let Err(message) = self.ensure_sandbox().await {
            warn!(error = %message, "pod sandbox not ready");
            for c in &pod_spec(&self.pod).containers {
                self.observed.waiting.insert(
                    c.name.clone(),
                    ("ContainerCreating".into(), message.clone()),
                );
            }
            self.publish();
            return RETRY;
        }
        if !self.refresh_instances().await {
            return Duration::ZERO;
        }
        let containers = pod_spec(&self.pod).containers.clone();
        let mut started = false;
        for c in &containers {
            match self.sync_container(c).await {
                Step::Started => started = true,
                Step::WaitFor(next) => wake = wake.min(next),
                Step::Nothing => {}
            }
        }
        if started {
            self.refresh_instances().await;
        }
        self.backoff.gc(Timestamp::now());
        self.publish();
        wake
    }

    /// Reads every instance from the shim; false if the shim is gone (the sandbox is then
    /// torn down, and recreated by the next sync).
    async fn refresh_instances(&mut self) -> bool {
        let instances = match self.node.runtime.call(&self.uid, &Request::State).await {
            Ok(Response::State { containers, .. }) => containers,
            result => {
                warn!(?result, "shim lost; the sandbox will be recreated");
                self.sandbox_ready = false;
                self.events = None;
                let _ = self.node.teardown_pod(&self.uid, None).await;
                return false;
            }
        };
        self.observed.instances = instances
            .into_iter()
            .map(|record| Instance {
                record,
                start_error: None,
            })
            .chain(self.failed_starts.values().cloned())
            .collect();
        true
    }

    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox_ready {
            if self.events.is_none() {
                self.events = self.node.runtime.subscribe(&self.uid).await.ok();
            }
            return Ok(());
        }
        let alive = self.adopted
            && self
                .node
                .runtime
                .call(&self.uid, &Request::State)
                .await
                .is_ok();
        if !alive {
            self.prepare_pod_dirs()
                .map_err(|e| format!("prepare pod directories: {e}"))?;
            let spec = build::sandbox_spec(&self.node.ctx, &self.pod);
            if let Err(e) = self.node.runtime.start_sandbox(&spec).await {
                let _ = self.node.teardown_pod(&self.uid, None).await;
                return Err(crate::error_chain(&e));
            }
            let network_us = match self.attach_network().await {
                Ok(took) => took.as_micros() as u64,
                Err(message) => {
                    let _ = self.node.teardown_pod(&self.uid, None).await;
                    return Err(message);
                }
            };
            info!(pod_ip = ?self.observed.pod_ip, network_us, "pod sandbox started");
        } else {
            let shim = self.node.runtime.shim(&self.uid);
            let attachment = network::read_attachment(shim.path());
            self.observed.pod_ip = attachment.as_ref().and_then(|a| a.pod_ip());
            if let (Some(a), Ok(net)) = (&attachment, self.node.network()) {
                if let Err(e) = net.check(&self.uid, &shim.ns_dir().join("net"), a).await {
                    warn!(error = %crate::error_chain(&e), "re-adopted pod's network check failed");
                }
            }
        }
        self.adopted = false;
        self.sandbox_ready = true;
        self.observed.sandbox_ready = true;
        self.observed.start_time.get_or_insert_with(Timestamp::now);
        self.events = self.node.runtime.subscribe(&self.uid).await.ok();
        Ok(())
    }

    /// Wires the new sandbox into the pod network and gives the pod's /etc/hosts its address.
    /// Returns how long the wiring itself (the CNI ADD's equivalent) took.
    async fn attach_network(&mut self) -> Result<std::time::Duration, String> {
        let net = self.node.network()?;
        let shim = self.node.runtime.shim(&self.uid);
        let (namespace, name) = namespace_name(&self.pod);
        let pod = network::PodRef {
            uid: &self.uid,
            namespace,
            name,
        };
        let started = std::time::Instant::now();
        let attachment = net
            .attach(&pod, &shim.ns_dir().join("net"))
            .await
            .map_err(|e| format!("network {}: {}", net.name(), crate::error_chain(&e)))?;
        let took = started.elapsed();
        network::save_attachment(shim.path(), &attachment)
            .map_err(|e| format!("save network attachment: {e}"))?;
        self.observed.pod_ip = attachment.pod_ip();
        let hosts = build::hosts_file(
            &self.pod,
            self.observed.pod_ip.map(|ip| ip.to_string()).as_deref(),
        );
        std::fs::write(
            self.node.ctx.paths.pod_root(&self.uid).join("etc-hosts"),
            hosts,
        )
        .map_err(|e| format!("write /etc/hosts: {e}"))?;
        Ok(took)
    }

    /// The pod's own directories and the files kubelet manages inside its containers.
    fn prepare_pod_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let paths = &self.node.ctx.paths;
        let root = paths.pod_root(&self.uid);
        std::fs::create_dir_all(&root)?;
        self.save_record()?;
        let pod = &self.pod;
        std::fs::write(root.join("etc-hosts"), build::hosts_file(pod, None))?;
        std::fs::write(root.join("hostname"), format!("{}\n", build::hostname(pod)))?;
        let resolv = build::resolv_conf(
            pod,
            &self.node.host_resolv,
            &self.node.config.cluster_dns,
            &self.node.config.cluster_domain,
        );
        std::fs::write(root.join("resolv.conf"), resolv)?;
        for v in pod_spec(pod)
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.empty_dir.is_some())
        {
            let dir = paths.empty_dir(&self.uid, &v.name);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        }
        let (ns, name) = namespace_name(pod);
        std::fs::create_dir_all(paths.pod_logs(ns, name, &self.uid))
    }

    /// pod.json: what a restarted agent re-adopts, written atomically.
    fn save_record(&self) -> std::io::Result<()> {
        let path = self.node.ctx.paths.pod_record(&self.uid);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&*self.pod)?)?;
        std::fs::rename(&tmp, &path)
    }

    /// Starts or restarts one container if its policy and backoff say so.
    async fn sync_container(&mut self, c: &Container) -> Step {
        let newest = self.newest(&c.name).cloned();
        let hash = spec_hash(c);
        let changed = |i: &Instance| i.record.labels.get(HASH_LABEL).is_some_and(|h| *h != hash);
        let attempt = match &newest {
            None => 0,
            Some(i) if i.record.exit.is_none() => {
                self.observed.waiting.remove(&c.name);
                if changed(i) {
                    self.replace(&c.name, &i.record.id);
                }
                return Step::Nothing;
            }
            // kubelet: "Container spec hash changed, will be restarted", whatever the policy.
            Some(i) if changed(i) => i.record.attempt + 1,
            Some(i) => {
                let exit = i.record.exit.as_ref().expect("exited");
                let policy = pod_spec(&self.pod)
                    .restart_policy
                    .as_deref()
                    .unwrap_or("Always");
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => exit.code != 0,
                    _ => true,
                };
                if !restart {
                    self.observed.waiting.remove(&c.name);
                    return Step::Nothing;
                }
                let key = backoff_key(c);
                let now = Timestamp::now();
                if let Some(remaining) = self.backoff.remaining(&key, exit.finished_at, now) {
                    let current = self.backoff.current(&key).unwrap_or_default();
                    let (ns, name) = namespace_name(&self.pod);
                    let message = format!(
                        "back-off {} restarting failed container={} pod={name}_{ns}({})",
                        humantime(current),
                        c.name,
                        self.uid
                    );
                    self.observed
                        .waiting
                        .insert(c.name.clone(), ("CrashLoopBackOff".into(), message));
                    return Step::WaitFor(remaining);
                }
                self.backoff.next(&key, exit.finished_at, now);
                i.record.attempt + 1
            }
        };
        self.start_container(c, attempt).await
    }

    /// Stops a running instance whose spec changed: SIGTERM, SIGKILL after the pod's grace.
    /// Its exit then makes the next sync start the new spec.
    fn replace(&mut self, name: &str, id: &str) {
        if !self.replacing.insert(id.to_owned()) {
            return;
        }
        info!(container = %name, "container spec changed; restarting it");
        let grace = grace_period(&self.pod);
        let (runtime, uid, id) = (self.node.runtime.clone(), self.uid.clone(), id.to_owned());
        tokio::spawn(async move {
            for (signal, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, Duration::ZERO)] {
                let request = Request::Signal {
                    id: id.clone(),
                    signal,
                };
                if runtime.call(&uid, &request).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        });
    }

    fn newest(&self, name: &str) -> Option<&Instance> {
        self.observed
            .instances
            .iter()
            .filter(|i| i.record.name == name)
            .max_by_key(|i| i.record.attempt)
    }

    async fn start_container(&mut self, c: &Container, attempt: u32) -> Step {
        let image_name = c.image.clone().unwrap_or_default();
        let image = match self.node.images.resolve(&image_name) {
            Ok(image) => image,
            Err(e) => {
                let reason = if c.image_pull_policy.as_deref() == Some("Never") {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                self.observed
                    .waiting
                    .insert(c.name.clone(), (reason.into(), crate::error_chain(&e)));
                return Step::WaitFor(RETRY);
            }
        };
        self.observed.image_ids.insert(
            c.name.clone(),
            format!("{}@{}", image.reference, image.digest),
        );
        let id = crate::random_hex(32);
        self.replacing.clear();
        let inst = BuildInstance {
            pod: &self.pod,
            container: c,
            image: &image,
            id: &id,
            attempt,
        };
        let mut spec = match build::container_spec(&self.node.ctx, &inst) {
            Ok(spec) => spec,
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
        let result = self
            .node
            .runtime
            .call(
                &self.uid,
                &Request::Create {
                    spec: Box::new(spec),
                },
            )
            .await;
        self.prune(&c.name, attempt).await;
        match result {
            Ok(_) => {
                info!(container = %c.name, attempt, "container started");
                self.observed.waiting.remove(&c.name);
                self.failed_starts.remove(&c.name);
                Step::Started
            }
            Err(e) => {
                let message = match e {
                    crate::runtime::Error::Shim { message, .. } => message,
                    other => crate::error_chain(&other),
                };
                warn!(container = %c.name, error = %message, "container failed to start");
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
                let _ = self
                    .node
                    .runtime
                    .call(
                        &self.uid,
                        &Request::Remove {
                            id: i.record.id.clone(),
                        },
                    )
                    .await;
                let log = paths.container_log(ns, pod_name, &self.uid, name, i.record.attempt);
                let _ = std::fs::remove_file(log);
            }
        }
    }

    fn publish(&mut self) {
        let status = status::pod_status(
            &self.pod,
            &self.observed,
            self.status.as_ref(),
            Timestamp::now(),
        );
        let mut pod = (*self.pod).clone();
        pod.status = Some(status.clone());
        self.status = Some(status);
        self.node
            .pods
            .lock()
            .expect("pod map lock")
            .insert(self.uid.clone(), pod);
    }

    /// SIGTERM, wait up to the grace period (shrinking if asked), SIGKILL, then tear down.
    async fn terminate(&mut self, requested: Option<Duration>, rx: &mut watch::Receiver<Desired>) {
        let spec_grace = grace_period(&self.pod);
        let mut grace = requested.map_or(spec_grace, |r| r.min(spec_grace));
        let started = tokio::time::Instant::now();
        info!(grace_seconds = grace.as_secs_f64(), "terminating pod");
        if let Some(pod) = self
            .node
            .pods
            .lock()
            .expect("pod map lock")
            .get_mut(&self.uid)
        {
            pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
            pod.metadata.deletion_grace_period_seconds = Some(grace.as_secs() as i64);
        }
        if self
            .node
            .runtime
            .call(&self.uid, &Request::State)
            .await
            .is_ok()
        {
            if self.events.is_none() {
                self.events = self.node.runtime.subscribe(&self.uid).await.ok();
            }
            self.signal_running(None).await;
            while !self.running().await.is_empty() {
                let left = grace.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { return; }
                        if let Desired::Delete { grace: Some(g) } = *rx.borrow_and_update() {
                            grace = grace.min(g);
                        }
                    }
                    _ = next_event(&mut self.events) => {}
                    _ = tokio::time::sleep(left.min(Duration::from_millis(500))) => {}
                }
            }
            if !self.running().await.is_empty() {
                info!("grace period over; killing");
                self.signal_running(Some(libc::SIGKILL)).await;
                let deadline = tokio::time::Instant::now() + KILL_WAIT;
                while !self.running().await.is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.events = None;
        let (ns, name) = namespace_name(&self.pod);
        let log_dir = self.node.ctx.paths.pod_logs(ns, name, &self.uid);
        for e in self.node.teardown_pod(&self.uid, Some(&log_dir)).await {
            warn!(error = %e, "teardown");
        }
        self.node
            .pods
            .lock()
            .expect("pod map lock")
            .remove(&self.uid);
        info!("pod deleted");
    }

    async fn running(&self) -> Vec<protocol::ContainerStatus> {
        match self.node.runtime.call(&self.uid, &Request::State).await {
            Ok(Response::State { containers, .. }) => containers
                .into_iter()
                .filter(|c| c.exit.is_none())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sends every running container its image's stop signal (SIGTERM unless the image names
    /// another), or `signal` when one is given.
    async fn signal_running(&self, signal: Option<i32>) {
        for c in self.running().await {
            let signal = signal.unwrap_or_else(|| stop_signal(&c));
            let id = c.id;
            if let Err(e) = self
                .node
                .runtime
                .call(&self.uid, &Request::Signal { id, signal })
                .await
            {
                warn!(error = %crate::error_chain(&e), signal, "signal container");
            }
        }
    }
}

fn namespace_name(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The CRI label under which each instance keeps the hash of the spec it was made from.
const HASH_LABEL: &str = "io.kubernetes.container.hash";

/// The image's `StopSignal`, kept with the instance for when it is stopped.
const STOP_SIGNAL_LABEL: &str = "nodelet.io/stop-signal";

/// The signal that asks an instance to stop: its image's (`SIGQUIT`, `QUIT` or `3`) or SIGTERM.
fn stop_signal(c: &protocol::ContainerStatus) -> i32 {
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

fn grace_period(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod_spec(pod)
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    )
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
}
