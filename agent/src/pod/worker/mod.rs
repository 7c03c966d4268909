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
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_sandbox::protocol;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use super::backoff::Backoff;
use super::build::{self, pod_spec, pod_uid};
use super::files;
use super::probe;
use super::status::{self, Instance, Observed};
use crate::network;
use crate::node::Node;
use crate::runtime::{Liveness, Scope, ShimEvents};

mod containers;
pub use containers::stop_signal;
mod hooks;
pub use hooks::termination_path;
mod order;
mod probes;
mod stop;
mod volumes;

const RETRY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub enum Desired {
    Run(Arc<Pod>),
    /// Delete the pod, allowing at most this grace period (it only ever shrinks).
    Delete {
        grace: Option<Duration>,
    },
}

/// What reading the shim's instances found.
enum Refresh {
    Fresh,
    /// The shim did not answer but still runs.
    Retry,
    /// The shim is gone and the sandbox with it.
    Lost,
}

/// What one container's sync did.
enum Step {
    Nothing,
    Started,
    /// Look again after this long (a backoff or a retry).
    WaitFor(Duration),
}

pub struct WorkerHandle {
    pub id: u64,
    pub tx: watch::Sender<Desired>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Which worker ended: its pod's UID and the worker's own number.
#[derive(Debug)]
pub struct Ended {
    pub uid: String,
    pub id: u64,
}

/// Starts the pod's worker; when it ends (the pod deleted), it says so on `done`.
pub fn spawn(
    node: Arc<Node>,
    pod: Arc<Pod>,
    adopted: bool,
    id: u64,
    done: mpsc::UnboundedSender<Ended>,
) -> WorkerHandle {
    let (tx, rx) = watch::channel(Desired::Run(pod.clone()));
    let span = tracing::info_span!(
        "pod",
        pod_uid = %pod_uid(&pod),
        namespace = pod.metadata.namespace.as_deref().unwrap_or("default"),
        name = pod.metadata.name.as_deref().unwrap_or_default()
    );
    let host_network = pod_spec(&pod).host_network == Some(true);
    let host_ip = node.config.node_ip.clone().or_else(|| {
        host_network
            .then(network::node_address)
            .flatten()
            .map(|ip| ip.to_string())
    });
    let (paths, uid) = (node.ctx.paths.clone(), pod_uid(&pod).to_owned());
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let mut worker = Worker {
        node,
        uid: pod_uid(&pod).to_owned(),
        pod,
        sandbox_ready: false,
        adopted,
        events: None,
        observed: Observed {
            host_ip,
            probes: probe::Results::load(&paths.pod_root(&uid).join(probes::RESULTS)),
            ..Observed::default()
        },
        failed_starts: HashMap::new(),
        backoff: Backoff::default(),
        status: None,
        killing: Default::default(),
        lost: files::load_lost(&paths, &uid),
        reports_tx,
        reports,
        probe_tasks: probe::Tasks::default(),
        desired: rx.clone(),
        objects_changed: Default::default(),
        written: HashMap::new(),
        mount_failure: None,
        tokens: HashMap::new(),
        admitted: false,
        // kubelet times a pod's start from when it first sees it; an adopted pod started before.
        first_seen: (!adopted).then(std::time::Instant::now),
    };
    // Known from now on, before the first sync: a pod that is being adopted or created is never
    // missing from what the node reports.
    worker.publish();
    let uid = worker.uid.clone();
    let task = tokio::spawn(
        async move {
            worker.run(rx).await;
            let _ = done.send(Ended { uid, id });
        }
        .instrument(span),
    );
    WorkerHandle { id, tx, task }
}

/// A worker that ends, however it ends, stops using the objects it watched.
impl Drop for Worker {
    fn drop(&mut self) {
        self.use_objects(&Default::default());
        if let Ok(mut admitted) = self.node.admitted_ports.lock() {
            admitted.remove(&self.uid);
        }
    }
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
    /// Running instances being stopped (a changed spec, a failed probe or hook, a finished pod).
    killing: std::collections::HashSet<String>,
    /// Each container's newest instance in a sandbox that was lost, by container name.
    lost: HashMap<String, Instance>,
    /// Probe results, from the probe tasks.
    reports_tx: mpsc::UnboundedSender<probe::Report>,
    reports: mpsc::UnboundedReceiver<probe::Report>,
    probe_tasks: probe::Tasks,
    /// The desired state, watched while a hook runs (a deletion cuts a postStart hook short).
    desired: watch::Receiver<Desired>,
    /// Rung by the node's watches when a ConfigMap or Secret the pod uses changes.
    objects_changed: Arc<tokio::sync::Notify>,
    /// A hash of the payload last written to each API volume, by volume name.
    written: HashMap<String, u64>,
    /// Why the pod's volumes could not be set up, last time (its event is sent once).
    mount_failure: Option<String>,
    /// The service account tokens its projected volumes show, by volume and source index.
    tokens: HashMap<(String, usize), volumes::HeldToken>,
    /// Whether the node's admission accepted the pod (and recorded its ports).
    admitted: bool,
    /// When the worker first saw a pod it starts, until the pod runs (for the start metric).
    first_seen: Option<std::time::Instant>,
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
        // The steps are boxed while they run: the state of a sync is many kilobytes, which an
        // idle worker (nearly all of them, nearly always) would otherwise hold for good.
        loop {
            let desired = rx.borrow_and_update().clone();
            let wake = match desired {
                Desired::Run(pod) => {
                    self.update(pod);
                    Box::pin(self.sync()).await
                }
                Desired::Delete { grace } => {
                    Box::pin(self.terminate(grace, &mut rx)).await;
                    return;
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = next_event(&mut self.events) => {}
                Some(report) = self.reports.recv() => Box::pin(self.probed(report)).await,
                _ = self.objects_changed.notified() => {}
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Takes a newer spec, keeping what the node first recorded (creation time).
    fn update(&mut self, pod: Arc<Pod>) {
        if Arc::ptr_eq(&pod, &self.pod) {
            return;
        }
        if pod.metadata.creation_timestamp == self.pod.metadata.creation_timestamp {
            // Shared with the source, not copied.
            self.pod = pod;
            return;
        }
        let mut pod = (*pod).clone();
        pod.metadata.creation_timestamp = self.pod.metadata.creation_timestamp.clone();
        self.pod = Arc::new(pod);
    }

    /// kubelet's activeDeadlineHandler: once the pod has been active on the node for
    /// `activeDeadlineSeconds` (from its start time), it is `Failed` with `DeadlineExceeded`.
    /// True once that is so; `left` is how long it still has otherwise.
    fn deadline_exceeded(&mut self) -> bool {
        if self.observed.failed.is_some() {
            return true;
        }
        let Some(left) = self.deadline_left() else {
            return false;
        };
        if !left.is_zero() {
            return false;
        }
        let message = "Pod was active on the node longer than the specified deadline";
        warn!("{message}");
        self.event(None, "DeadlineExceeded", message.to_owned(), true);
        self.observed.failed = Some(("DeadlineExceeded".into(), message.into()));
        self.probe_tasks = probe::Tasks::default();
        true
    }

    /// What is left of `activeDeadlineSeconds`, if the pod has one and has started.
    fn deadline_left(&self) -> Option<Duration> {
        let seconds = pod_spec(&self.pod).active_deadline_seconds?;
        let start = self.observed.start_time?;
        let end = start + jiff::SignedDuration::from_secs(seconds.max(0));
        let left = end.duration_since(Timestamp::now());
        Some(Duration::try_from(left).unwrap_or_default())
    }

    /// A pod past its deadline: every running container is stopped (as kubelet kills the pod,
    /// with its grace period) and none is started again; returns when to look again.
    async fn stop_for_deadline(&mut self) -> Duration {
        if self.sandbox_ready {
            if let Refresh::Lost = self.refresh_instances().await {
                return Duration::ZERO;
            }
        }
        let pod = self.pod.clone();
        let ephemeral = build::ephemeral_containers(&pod);
        let mut running = false;
        for c in status::containers(&pod).map(|(c, _)| c).chain(&ephemeral) {
            if let Some(i) = self.current(&c.name).filter(|i| i.running()).cloned() {
                running = true;
                let message = format!("Stopping container {}", c.name);
                self.kill(c, &i.record, grace_period(&pod), message);
            }
        }
        self.publish();
        // Exits wake the worker; once all are down, nothing is left to do.
        if running {
            RETRY
        } else {
            Duration::from_secs(3600)
        }
    }

    /// When to look again with nothing changed: `syncFrequency` and up to half of it again,
    /// so a thousand pods started together do not resync together.
    fn resync(&self) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let base = self.node.config.sync_frequency;
        // std's per-process random hash keys, a new one each time: no descriptor to open (the
        // node may be out of them) for what needs no strong randomness.
        let jitter = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u16;
        base + base.mul_f64(f64::from(jitter) / f64::from(u16::MAX) / 2.0)
    }

    /// One pass towards the desired state; returns when to look again at the latest.
    async fn sync(&mut self) -> Duration {
        let mut wake = self.resync();
        // The node's admission, before anything of the pod exists (a pod already running, found
        // at agent start, was admitted before: it is only recorded).
        if self.observed.rejected.is_none() && !self.admitted {
            let node = self.node.clone();
            let mut admitted = node.admitted_ports.lock().expect("admitted ports lock");
            let verdict = if self.sandbox_ready || self.adopted {
                None
            } else {
                let others = admitted
                    .iter()
                    .filter(|(uid, _)| **uid != self.uid)
                    .map(|(_, m)| m.as_slice());
                let allowed = &self.node.config.allowed_unsafe_sysctls;
                let max = self.node.config.max_pods;
                let used = admitted.len() - usize::from(admitted.contains_key(&self.uid));
                super::admission::pods(used, max)
                    .or_else(|| super::admission::check(&self.pod, allowed, others))
            };
            match verdict {
                Some((reason, message)) => {
                    drop(admitted);
                    warn!(%reason, %message, "pod rejected");
                    self.event(None, reason, message.clone(), true);
                    self.observed.rejected = Some((reason.to_owned(), message));
                }
                None => {
                    admitted.insert(self.uid.clone(), network::hostports::held(&self.pod));
                    self.admitted = true;
                }
            }
        }
        if self.observed.rejected.is_some() {
            self.publish();
            return Duration::from_secs(3600);
        }
        if self.deadline_exceeded() {
            return self.stop_for_deadline().await;
        }
        if let Err(message) = self.ensure_sandbox().await {
            warn!(error = %message, "pod sandbox not ready");
            let pod = self.pod.clone();
            let reason = if pod_spec(&pod)
                .init_containers
                .as_ref()
                .is_some_and(|i| !i.is_empty())
            {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            for (c, _) in status::containers(&pod) {
                self.observed
                    .waiting
                    .insert(c.name.clone(), (reason.into(), message.clone()));
            }
            self.publish();
            return RETRY;
        }
        match self.refresh_instances().await {
            Refresh::Fresh => {}
            Refresh::Retry => return RETRY,
            Refresh::Lost => return Duration::ZERO,
        }
        match self.sync_volumes().await {
            Ok(()) => self.mount_failure = None,
            Err(message) => {
                warn!(error = %message, "pod volumes not ready");
                if self.mount_failure.as_ref() != Some(&message) {
                    self.event(None, "FailedMount", message.clone(), true);
                    self.mount_failure = Some(message.clone());
                }
                wake = wake.min(RETRY);
                // Volumes that were all set up once keep what they show, and the pod goes on (a
                // crashed container is restarted) while an update cannot be read; a pod whose
                // volumes were never all there waits, as kubelet waits for its mounts.
                let all_once = pod_spec(&self.pod.clone())
                    .volumes
                    .iter()
                    .flatten()
                    .filter(|v| super::projected::is_api_volume(v))
                    .all(|v| {
                        // Written by this worker, or by the agent before a restart.
                        let paths = &self.node.ctx.paths;
                        let dir = paths.volume_dir(&self.uid, super::projected::plugin(v), &v.name);
                        self.written.contains_key(&v.name)
                            || dir.join(super::projected::DATA).exists()
                    });
                if !all_once {
                    // Only containers that have not run in this sandbox wait for the volumes: a
                    // finished init container stays finished, a running one runs on.
                    for (c, _) in status::containers(&self.pod.clone()) {
                        if self.current(&c.name).is_none() {
                            let waiting = ("ContainerCreating".to_owned(), message.clone());
                            self.observed.waiting.insert(c.name.clone(), waiting);
                        }
                    }
                    self.publish();
                    return RETRY;
                }
            }
        }
        if let Some(refresh) = self.next_token_refresh() {
            wake = wake.min(refresh);
        }
        let pod = self.pod.clone();
        // Each pass starts what the pod's order allows now (kubelet's `computePodActions`):
        // init containers one at a time, sidecars in order, then the app containers; a start
        // that lets the next container go is followed by another pass.
        for _ in 0..=status::containers(&pod).count() {
            let plan = order::plan(&pod, &self.observed);
            for c in plan.stop {
                if let Some(i) = self.current(&c.name).filter(|i| i.running()).cloned() {
                    let message = format!("Stopping container {}", c.name);
                    self.kill(c, &i.record, grace_period(&pod), message);
                }
            }
            let mut started = false;
            for (c, policy) in plan.sync {
                match self.sync_container(c, policy).await {
                    Step::Started => started = true,
                    Step::WaitFor(next) => wake = wake.min(next),
                    Step::Nothing => {}
                }
            }
            self.mark_waiting(&plan.waiting);
            if !started {
                break;
            }
            if let Refresh::Lost = self.refresh_instances().await {
                return Duration::ZERO;
            }
        }
        // Ephemeral containers: started once each, whenever the sandbox is there, never
        // restarted (kubelet's), and outside the pod's order.
        let mut started = false;
        for c in build::ephemeral_containers(&pod) {
            match self.sync_container(&c, "Never").await {
                Step::WaitFor(next) => wake = wake.min(next),
                Step::Started => started = true,
                Step::Nothing => {}
            }
        }
        // What was started is in the status this pass publishes, not the next resync's.
        if started {
            if let Refresh::Lost = self.refresh_instances().await {
                return Duration::ZERO;
            }
        }
        self.sync_probes();
        self.backoff.gc(Timestamp::now());
        self.publish();
        if let Some(left) = self.deadline_left() {
            wake = wake.min(left);
        }
        wake
    }

    /// The container's newest instance in this sandbox.
    fn current(&self, name: &str) -> Option<&Instance> {
        order::current(&self.observed, name)
    }

    /// Containers the pod's order holds back wait as `PodInitializing` (kubelet's default
    /// waiting reason for a pod with init containers), unless they wait for a reason of their own.
    fn mark_waiting(&mut self, names: &[String]) {
        for name in names {
            let entry = self.observed.waiting.entry(name.clone());
            entry.or_insert_with(|| ("PodInitializing".into(), String::new()));
        }
    }

    /// Reads every instance from the shim. A shim that did not answer is asked again later; one
    /// that is gone has lost the sandbox, which is then torn down and recreated by the next sync.
    async fn refresh_instances(&mut self) -> Refresh {
        let instances = match self.node.runtime.state(&self.uid).await {
            Ok(containers) => containers,
            result => {
                if self.node.runtime.liveness(&self.uid).await == Liveness::Alive {
                    warn!(?result, "shim did not answer; asking again");
                    return Refresh::Retry;
                }
                self.sandbox_lost().await;
                return Refresh::Lost;
            }
        };
        self.observed.instances = instances
            .into_iter()
            .map(|record| Instance {
                record,
                start_error: None,
                previous_sandbox: false,
            })
            .chain(self.failed_starts.values().cloned())
            .chain(self.lost.values().cloned())
            .collect();
        self.read_termination_messages();
        let running: std::collections::HashSet<String> = self
            .observed
            .instances
            .iter()
            .filter(|i| i.running() && !i.previous_sandbox)
            .map(|i| i.record.id.clone())
            .collect();
        self.killing.retain(|id| running.contains(id));
        self.probe_tasks.retain(&|id| running.contains(id));
        if self.observed.probes.retain(&|id| running.contains(id)) {
            self.save_probes();
        }
        Refresh::Fresh
    }

    /// The shim died with the pod's sandbox: everything in it is killed and released, and each
    /// container's newest instance is kept as exited (SIGKILL), so that the next sandbox starts
    /// it again as a restart, counted, with the lost instance as its `lastState` (kubelet's
    /// `SandboxChanged`).
    async fn sandbox_lost(&mut self) {
        warn!("shim gone; the pod sandbox will be recreated");
        self.event(
            None,
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.".into(),
            false,
        );
        let now = Timestamp::now();
        let pod = self.pod.clone();
        let newest: Vec<Instance> = status::containers(&pod)
            .filter_map(|(c, _)| {
                self.observed
                    .instances
                    .iter()
                    .filter(|i| i.record.name == c.name)
                    .max_by_key(|i| i.record.attempt)
            })
            .cloned()
            .collect();
        for mut i in newest {
            i.previous_sandbox = true;
            i.record.exit.get_or_insert(protocol::Exit {
                code: 128 + libc::SIGKILL,
                signal: Some(libc::SIGKILL),
                finished_at: now,
                oom_killed: false,
            });
            self.lost.insert(i.record.name.clone(), i);
        }
        self.sandbox_ready = false;
        self.observed.sandbox_ready = false;
        self.events = None;
        self.probe_tasks = probe::Tasks::default();
        for e in self.node.teardown_pod(&self.uid, Scope::Sandbox).await {
            warn!(error = %e, "teardown of the lost sandbox");
        }
        if let Err(e) = files::save_lost(&self.node.ctx.paths, &self.uid, &self.lost) {
            warn!(error = %e, "record the lost sandbox's containers");
        }
        self.observed.instances = self.lost.values().cloned().collect();
    }

    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox_ready {
            if self.events.is_none() {
                self.events = self.node.runtime.subscribe(&self.uid).await.ok();
            }
            return Ok(());
        }
        let alive = self.adopted && self.node.runtime.liveness(&self.uid).await == Liveness::Alive;
        if !alive {
            self.prepare_pod_dirs()
                .map_err(|e| format!("prepare pod directories: {e}"))?;
            let userns = self.user_namespace()?;
            let spec = build::sandbox_spec(&self.node.ctx, &self.pod, userns);
            if let Err(e) = self.node.runtime.start_sandbox(&spec).await {
                let _ = self.node.teardown_pod(&self.uid, Scope::Sandbox).await;
                return Err(crate::error_chain(&e));
            }
            // A hostNetwork pod has the node's network: nothing to wire.
            let attached = match self.host_network_ip() {
                Some(ip) => {
                    self.observed.pod_ip = ip;
                    Ok(std::time::Duration::ZERO)
                }
                None => self.attach_network().await,
            };
            let network_us = match attached {
                Ok(took) => took.as_micros() as u64,
                Err(message) => {
                    let _ = self.node.teardown_pod(&self.uid, Scope::Sandbox).await;
                    return Err(message);
                }
            };
            if let Err(message) = self.map_host_ports().await {
                let _ = self.node.teardown_pod(&self.uid, Scope::Sandbox).await;
                return Err(message);
            }
            info!(pod_ip = ?self.observed.pod_ip, network_us, "pod sandbox started");
        } else {
            let shim = self.node.runtime.shim(&self.uid);
            let attachment = network::read_attachment(shim.path());
            self.observed.pod_ip = self
                .host_network_ip()
                .unwrap_or_else(|| attachment.as_ref().and_then(|a| a.pod_ip()));
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

    /// A `hostUsers: false` pod's user namespace, allocated once and kept in its directory.
    fn user_namespace(&self) -> Result<Option<nodelet_sandbox::spec::IdMap>, String> {
        if pod_spec(&self.pod).host_users != Some(false) {
            return Ok(None);
        }
        use crate::pod::userns;
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        userns::kernel_supports(&release)?;
        let range = userns::node_range("/etc/subuid".as_ref(), "/etc/subgid".as_ref())
            .map_err(|e| crate::error_chain(&e))?;
        userns::allocate(&self.node.ctx.paths.pods_root(), &self.uid, range)
            .map(Some)
            .map_err(|e| {
                format!(
                    "allocate the pod's user namespace: {}",
                    crate::error_chain(&e)
                )
            })
    }

    /// A hostNetwork pod's address, the node's (`None`: the pod has a network of its own).
    fn host_network_ip(&self) -> Option<Option<std::net::IpAddr>> {
        (pod_spec(&self.pod).host_network == Some(true)).then(|| {
            self.observed
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
        })
    }

    /// The pod's `hostPort` mappings, once it has its address. A marker in the shim's directory
    /// says there are rules to remove at teardown (most pods have none, and no nft runs for them).
    async fn map_host_ports(&mut self) -> Result<(), String> {
        let mappings = network::hostports::mappings(&self.pod);
        let (false, Some(ip)) = (mappings.is_empty(), self.observed.pod_ip) else {
            return Ok(());
        };
        let marker = self
            .node
            .runtime
            .shim(&self.uid)
            .path()
            .join(network::hostports::MARKER);
        std::fs::write(&marker, b"").map_err(|e| format!("write {}: {e}", marker.display()))?;
        network::hostports::add(&self.uid, ip, &mappings)
            .await
            .map_err(|e| format!("map host ports: {}", crate::error_chain(&e)))
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
        let hosts = files::hosts_file(
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
        let paths = &self.node.ctx.paths;
        let root = paths.pod_root(&self.uid);
        std::fs::create_dir_all(&root)?;
        self.save_record()?;
        let pod = &self.pod;
        std::fs::write(root.join("etc-hosts"), files::hosts_file(pod, None))?;
        std::fs::write(root.join("hostname"), format!("{}\n", build::hostname(pod)))?;
        let resolv = files::resolv_conf(
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
            super::volumes::prepare_empty_dir(&dir, v)?;
            // kubelet's SetVolumeOwnership: the pod's fsGroup owns the volume and may write it.
            let security = pod_spec(pod).security_context.as_ref();
            if let Some(gid) = security.and_then(|s| s.fs_group) {
                let only_on_mismatch = security.and_then(|s| s.fs_group_change_policy.as_deref())
                    == Some("OnRootMismatch");
                let owner = super::projected::Ownership {
                    gid: gid as u32,
                    read_only: false,
                };
                owner.apply(&dir, only_on_mismatch)?;
            }
        }
        let (ns, name) = namespace_name(pod);
        std::fs::create_dir_all(paths.pod_logs(ns, name, &self.uid))
    }

    /// pod.json: what a restarted agent re-adopts, written atomically.
    fn save_record(&self) -> std::io::Result<()> {
        let path = self.node.ctx.paths.pod_record(&self.uid);
        crate::write_private(&path, &serde_json::to_vec(&*self.pod)?)
    }

    fn publish(&mut self) {
        let status = status::pod_status(
            &self.pod,
            &self.observed,
            self.status.as_ref(),
            Timestamp::now(),
        );
        // A finished pod holds no place on the node any more (kubelet admits against active
        // pods only): its ports and its count go.
        if self.admitted && matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            if let Ok(mut admitted) = self.node.admitted_ports.lock() {
                admitted.remove(&self.uid);
            }
        }
        match status.phase.as_deref() {
            Some("Running") => {
                if let Some(seen) = self.first_seen.take() {
                    crate::metrics::KUBELET
                        .pod_start
                        .observe(seen.elapsed().as_secs_f64());
                }
            }
            Some("Pending") | None => {}
            Some(_) => self.first_seen = None,
        }
        let reported = crate::node::Reported {
            pod: self.pod.clone(),
            status: Arc::new(status.clone()),
        };
        self.status = Some(status);
        let changed = self
            .node
            .pods
            .lock()
            .expect("pod map lock")
            .insert(self.uid.clone(), reported.clone())
            .is_none_or(|old| {
                old.status != reported.status || !Arc::ptr_eq(&old.pod, &reported.pod)
            });
        if changed {
            self.node.changed.notify_one();
        }
    }

    /// SIGTERM, wait up to the grace period (shrinking if asked), SIGKILL, then tear down.
    async fn terminate(&mut self, requested: Option<Duration>, rx: &mut watch::Receiver<Desired>) {
        let spec_grace = grace_period(&self.pod);
        let grace = requested.map_or(spec_grace, |r| r.min(spec_grace));
        info!(grace_seconds = grace.as_secs_f64(), "terminating pod");
        // Liveness and startup probes stop with the deletion (kubelet's prober does).
        self.probe_tasks = probe::Tasks::default();
        let mut pod = (*self.pod).clone();
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        pod.metadata.deletion_grace_period_seconds = Some(grace.as_secs() as i64);
        self.pod = Arc::new(pod);
        if let Some(reported) = self
            .node
            .pods
            .lock()
            .expect("pod map lock")
            .get_mut(&self.uid)
        {
            reported.pod = self.pod.clone();
        }
        if self.node.runtime.liveness(&self.uid).await == Liveness::Alive {
            if self.events.is_none() {
                self.events = self.node.runtime.subscribe(&self.uid).await.ok();
            }
            match stop::stop_within(self, grace, rx).await {
                stop::Stopped::Abandoned => return,
                stop::Stopped::Stuck => warn!("containers still run after SIGKILL; tearing down"),
                stop::Stopped::Exited => {}
            }
        }
        self.events = None;
        let (namespace, name) = namespace_name(&self.pod);
        // The pod is gone only once everything of it is: a teardown that failed (out of
        // descriptors, a busy mount) is tried again, and the pod stays Terminating meanwhile,
        // as kubelet keeps it.
        let mut delay = RETRY;
        loop {
            let logs = Scope::Pod {
                logs: Some(crate::runtime::PodName { namespace, name }),
            };
            let errors = self.node.teardown_pod(&self.uid, logs).await;
            if errors.is_empty() {
                break;
            }
            for e in &errors {
                warn!(error = %e, "teardown; trying again");
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        self.node
            .pods
            .lock()
            .expect("pod map lock")
            .remove(&self.uid);
        self.node.changed.notify_one();
        info!("pod deleted");
    }

    fn event(&self, container: Option<&str>, reason: &'static str, message: String, warning: bool) {
        self.node
            .event(&self.pod, container, reason, message, warning);
    }
}

/// The worker's shim, as `stop` sees it.
impl stop::Containers for Worker {
    async fn running(&mut self) -> Option<Vec<protocol::ContainerStatus>> {
        match self.node.runtime.state(&self.uid).await {
            Ok(containers) => Some(
                containers
                    .into_iter()
                    .filter(|c| c.exit.is_none())
                    .collect(),
            ),
            Err(_) if self.node.runtime.liveness(&self.uid).await == Liveness::Gone => {
                Some(Vec::new())
            }
            Err(_) => None,
        }
    }

    /// `signal`, or each container's image's stop signal (SIGTERM unless it names another).
    async fn signal(&mut self, running: &[protocol::ContainerStatus], signal: Option<i32>) {
        for c in running {
            let signal = signal.unwrap_or_else(|| containers::stop_signal(c));
            if let Err(e) = self.node.runtime.signal(&self.uid, &c.id, signal).await {
                warn!(error = %crate::error_chain(&e), signal, "signal container");
            }
        }
    }

    async fn exited(&mut self) {
        next_event(&mut self.events).await;
    }

    fn stopping(&mut self, c: &protocol::ContainerStatus) {
        self.event(
            Some(&c.name),
            "Killing",
            format!("Stopping container {}", c.name),
            false,
        );
    }

    fn pre_stop(&mut self, record: &protocol::ContainerStatus) -> Option<stop::Hook> {
        let pod = self.pod.clone();
        let (c, _) = status::containers(&pod).find(|(c, _)| c.name == record.name)?;
        self.probe_tasks.stop(&record.id);
        let hook = Worker::pre_stop(self, c, record)?;
        Some(Box::pin(hook))
    }

    /// A sidecar stops after the app containers and the sidecars started after it (kubelet's
    /// `terminationOrdering`); the others stop at once.
    fn waits_for(&self, record: &protocol::ContainerStatus) -> Vec<String> {
        let all: Vec<_> = status::containers(&self.pod).collect();
        let Some(at) = all.iter().position(|(c, _)| c.name == record.name) else {
            return Vec::new();
        };
        if all[at].1 != status::Role::Sidecar {
            return Vec::new();
        }
        all[at + 1..]
            .iter()
            .filter(|(_, role)| *role != status::Role::Init)
            .map(|(c, _)| c.name.clone())
            .collect()
    }
}

fn namespace_name(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn grace_period(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod_spec(pod)
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    )
}
