//! The running agent: shared node state, re-adoption of pods at start, the loop that matches pod
//! workers to the desired pods, and the local control socket that `nodelet pods` / `logs` use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::images::ImageStore;
use crate::network::{self, Network};
use crate::paths::NodePaths;
use crate::pod::build::NodeContext;
use crate::pod::worker::{self, Desired, WorkerHandle};
use crate::runtime::{Liveness, Runtime, Scope};
use crate::source::{self, FileSource};

/// A pod as its worker last reported it: the pod it runs (shared with the worker, not copied)
/// and the status it has.
#[derive(Clone, Debug)]
pub struct Reported {
    pub pod: Arc<Pod>,
    pub status: Arc<k8s_openapi::api::core::v1::PodStatus>,
}

impl Reported {
    /// The pod with its status, as the API shows a pod.
    pub fn to_pod(&self) -> Pod {
        let mut pod = (*self.pod).clone();
        pod.status = Some((*self.status).clone());
        pod
    }
}

/// What every pod worker shares.
pub struct Node {
    pub config: Config,
    pub ctx: NodeContext,
    pub runtime: Runtime,
    pub images: ImageStore,
    pub puller: crate::images::pull::Puller,
    /// The pods as last reported by their workers, with status (what `nodelet pods` shows).
    pub pods: Mutex<BTreeMap<String, Reported>>,
    pub host_resolv: String,
    /// Rung whenever a pod's reported status changes or a pod leaves the node.
    pub changed: tokio::sync::Notify,
    events: mpsc::UnboundedSender<PodEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<PodEvent>>>,
    /// The pod network, loaded on first use (and again after a failure, so a fixed CNI config
    /// takes effect without a restart).
    network: Mutex<Option<Arc<Network>>>,
    /// The API server this node answers to, once connected (image pull secrets, ConfigMaps,
    /// Secrets, tokens).
    pub api: std::sync::OnceLock<kube::Client>,
    /// The ConfigMaps and Secrets the pods use, watched.
    pub objects: crate::pod::objects::Objects,
    /// The node ports each admitted, unfinished pod holds, by pod UID (and so how many there
    /// are, for `maxPods`): admission checks a new pod against them and records it under the
    /// same lock, so two pods never both get a port or the last place.
    pub admitted_ports: Mutex<HashMap<String, Vec<crate::network::hostports::Mapping>>>,
    /// Rung when image garbage collection may have work: a pull finished, a pod left.
    pub image_gc: tokio::sync::Notify,
    /// CPU readings for the Summary API's rates.
    pub stats: crate::stats::Sampler,
    /// Directory walks for its filesystem figures, kept a minute.
    pub disk_usage: crate::stats::DiskUsage,
}

/// Something that happened to a pod, for `kubectl describe` (kubelet's event recorder).
#[derive(Debug, Clone)]
pub struct PodEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container the event is about, as kubelet names it (`spec.containers{name}` or
    /// `spec.initContainers{name}`).
    pub field_path: Option<String>,
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Pods,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PodList {
    pub items: Vec<Pod>,
}

impl Node {
    /// Reads every pod's and container's CPU counter each `stats::PERIOD`, so that a scrape
    /// has a rate at once (cadvisor's housekeeping).
    async fn sample_stats(self: Arc<Self>) {
        let hierarchy = nodelet_sandbox::cgroup::Hierarchy::detect();
        loop {
            let node = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let cgroups =
                    crate::kubelet::summary::cgroups(&crate::kubelet::summary::pods(&node));
                node.stats.sample(hierarchy, &cgroups);
            })
            .await;
            tokio::time::sleep(crate::stats::PERIOD).await;
        }
    }

    /// Image garbage collection: every 5 minutes as kubelet, and when rung.
    async fn collect_images(self: Arc<Self>) {
        const PERIOD: std::time::Duration = std::time::Duration::from_secs(300);
        let policy = crate::images::gc::Policy::new(&self.config);
        loop {
            // Not at start: the sources have not said yet which pods (and images) the node has.
            tokio::select! {
                () = self.image_gc.notified() => {}
                () = tokio::time::sleep(PERIOD) => {}
            }
            let pulls_paused = self.puller.pause().await;
            let in_use = self.images_in_use();
            let store = self.images.clone();
            let collected = tokio::task::spawn_blocking(move || {
                crate::images::gc::collect(&store, policy, &in_use)
            })
            .await
            .expect("image gc task");
            drop(pulls_paused);
            if let Err(e) = collected {
                warn!(error = %crate::error_chain(&e), "image garbage collection");
            }
        }
    }

    /// Manifest digests of the images the node's pods name or run.
    fn images_in_use(&self) -> HashSet<String> {
        let (names, mut used) = {
            let pods = self.pods.lock().expect("pods lock");
            let mut names: Vec<String> = Vec::new();
            let mut used = HashSet::new();
            for Reported { pod, status } in pods.values() {
                let containers = pod.spec.iter().flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                });
                names.extend(containers.filter_map(|c| c.image.clone()));
                let ephemeral = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.ephemeral_containers.iter().flatten());
                names.extend(ephemeral.filter_map(|c| c.image.clone()));
                let statuses = std::iter::once(&**status).flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                        .chain(s.ephemeral_container_statuses.iter().flatten())
                });
                used.extend(
                    statuses
                        .filter_map(|c| c.image_id.split_once('@'))
                        .map(|(_, digest)| digest.to_owned()),
                );
            }
            (names, used)
        };
        used.extend(self.images.digests_of(names.iter().map(String::as_str)));
        used
    }

    pub fn new(config: Config) -> anyhow::Result<Node> {
        let paths = NodePaths::new(&config);
        let images = ImageStore::open(paths.images())?;
        let swept = images.sweep_tmp();
        if swept > 0 {
            info!(entries = swept, "removed work left by interrupted pulls");
        }
        let host_resolv = std::fs::read_to_string(&config.resolv_conf).unwrap_or_default();
        let max_size = crate::pod::quantity::parse_bytes(&config.container_log_max_size)
            .filter(|size| *size > 0)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "config: containerLogMaxSize: invalid quantity {:?}",
                    config.container_log_max_size
                )
            })?;
        if config.max_pods == 0 {
            anyhow::bail!("config: maxPods: must be at least 1, got 0");
        }
        if config.container_log_max_files < 2 {
            anyhow::bail!(
                "config: containerLogMaxFiles: must be at least 2, got {}",
                config.container_log_max_files
            );
        }
        let ctx = NodeContext {
            paths: paths.clone(),
            node_name: config.node_name(),
            cgroup_root: PathBuf::from(config.cgroup_root.trim_start_matches('/')),
            log_rotation: nodelet_sandbox::logs::Rotation {
                max_size,
                max_files: config.container_log_max_files,
            },
            pod_pids_limit: match config.pod_pids_limit {
                -1 => None,
                n if n > 0 => Some(n as u64),
                n => anyhow::bail!("config: podPidsLimit: must be -1 or positive, got {n}"),
            },
            api_service: Default::default(),
            seccomp_default: config.seccomp_default,
            seccomp_dir: config.root_dir.join("seccomp"),
        };
        let puller = crate::images::pull::Puller::new(
            images.clone(),
            crate::images::registry::Settings::new(&config),
        );
        let (events, events_rx) = mpsc::unbounded_channel();
        Ok(Node {
            changed: tokio::sync::Notify::new(),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            runtime: Runtime::new(paths),
            images,
            puller,
            pods: Mutex::new(BTreeMap::new()),
            host_resolv,
            ctx,
            config,
            network: Mutex::new(None),
            api: std::sync::OnceLock::new(),
            objects: Default::default(),
            admitted_ports: Default::default(),
            image_gc: tokio::sync::Notify::new(),
            stats: crate::stats::Sampler::default(),
            disk_usage: crate::stats::DiskUsage::default(),
        })
    }

    /// The node's pod of that namespace and name, as last reported (with its UID as key).
    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<(String, Reported)> {
        self.pods
            .lock()
            .expect("pod map lock")
            .iter()
            .find(|(_, p)| {
                p.pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && p.pod.metadata.name.as_deref() == Some(name)
            })
            .map(|(uid, p)| (uid.clone(), p.clone()))
    }

    /// Records an event about a pod (and one of its containers); sent on by the API source.
    pub fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        reason: &'static str,
        message: String,
        warning: bool,
    ) {
        let _ = self.events.send(PodEvent {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path: container.map(|name| {
                let init = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.name == name));
                let list = if init { "initContainers" } else { "containers" };
                format!("spec.{list}{{{name}}}")
            }),
            reason,
            message,
            warning,
        });
    }

    /// The pod network, loading the CNI configuration if needed. Errors name the file, field and
    /// value; the agent keeps running and pods wait with that reason.
    pub fn network(&self) -> Result<Arc<Network>, String> {
        let mut slot = self.network.lock().expect("network lock");
        if let Some(net) = slot.as_ref() {
            return Ok(net.clone());
        }
        let net = network::load(&self.config)
            .and_then(|list| Network::new(list, &self.config))
            .map_err(|e| crate::error_chain(&e))?;
        if let Some(room) = net.address_capacity() {
            if room < self.config.max_pods as u128 {
                warn!(
                    addresses = room,
                    max_pods = self.config.max_pods,
                    network = net.name(),
                    "the pod network's address ranges hold fewer pods than maxPods: pods beyond them fail to get an address (give podCIDR room, e.g. a /22 for 1,000 pods)"
                );
            }
        }
        let net = Arc::new(net);
        *slot = Some(net.clone());
        Ok(net)
    }

    /// Releases everything of a pod: its network attachment first (it is read from the shim's
    /// directory), then the sandbox, cgroups, directories and logs.
    pub async fn teardown_pod(&self, uid: &str, scope: Scope<'_>) -> Vec<String> {
        let mut errors = Vec::new();
        let shim = self.runtime.shim(uid);
        let attachment = network::read_attachment(shim.path());
        // A hostNetwork pod has no attachment and its "pod" namespace is the node's: nothing to
        // detach, and nothing there to touch.
        let host_network = std::fs::read(shim.config())
            .ok()
            .and_then(|d| serde_json::from_slice::<nodelet_sandbox::spec::SandboxSpec>(&d).ok())
            .is_some_and(|s| s.host_network);
        let wired = !host_network && (shim.path().exists() || attachment.is_some());
        if shim.path().join(network::hostports::MARKER).exists() {
            if let Err(e) = network::hostports::remove(uid).await {
                errors.push(crate::error_chain(&e));
            }
        }
        // CNI plugins are given the namespace to DEL from, so they run while it is there. The
        // native path lets the namespace go first: its veth goes with it (see `detach`).
        let native = attachment.as_ref().is_none_or(|a| a.result.is_none());
        if wired && !native {
            errors.extend(self.detach(uid, attachment.as_ref()).await);
        }
        errors.extend(self.runtime.teardown(uid, scope).await);
        if wired && native {
            errors.extend(self.detach(uid, attachment.as_ref()).await);
        }
        errors
    }

    async fn detach(&self, uid: &str, attachment: Option<&network::Attachment>) -> Vec<String> {
        match self.network() {
            Ok(net) => {
                let netns = self.runtime.shim(uid).ns_dir().join("net");
                net.detach(uid, &netns, attachment).await
            }
            Err(e) => vec![e],
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; pods keep running after it returns, as with kubelet.
pub async fn run(config: Config, notifier: crate::systemd::Notifier) -> anyhow::Result<()> {
    let paths = NodePaths::new(&config);
    for warning in crate::limits::check(config.max_pods, crate::limits::read_sysctl) {
        warn!("{warning}");
    }
    for dir in [
        &paths.root,
        &paths.run,
        &paths.logs,
        &paths.shims(),
        &paths.pods_root(),
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // Pod records, container environments, the API's store and keys live below these: only
    // root may look (etcd's data directory and kubelet's keys are kept the same way).
    for dir in [&paths.root, &paths.run] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    let _lock = lock_run_dir(&paths)?;
    crate::pod::volumes::mount_api_volumes(&paths.api_volumes())
        .with_context(|| format!("mount a tmpfs on {}", paths.api_volumes().display()))?;
    raise_descriptor_limit();
    let node = Arc::new(Node::new(config)?);
    info!(node = %node.ctx.node_name, root = %paths.root.display(), run = %paths.run.display(), "nodelet starting");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut workers = Workers {
        node: node.clone(),
        handles: HashMap::new(),
        deleting: HashSet::new(),
        done: done_tx,
        next_id: 0,
    };
    adopt(&mut workers).await;
    crate::pod::loglinks::sweep(&paths);
    match node.network() {
        Ok(net) => {
            net.gc(&workers.handles.keys().cloned().collect());
            if let Err(e) = net.route_peers(&node.config.static_peers).await {
                error!(error = %e, "routes to peer nodes");
            }
        }
        Err(e) => error!(error = %e, "pod network unavailable; pods will wait for it"),
    }

    let listener = bind_control(&paths)?;
    tokio::spawn(serve_control(listener, node.clone()));
    tokio::spawn(node.clone().collect_images());
    tokio::spawn(node.clone().sample_stats());

    let (tx, mut files_rx) = watch::channel::<source::Desired>(None);
    let source = FileSource::new(
        node.config.static_pod_path.clone(),
        node.ctx.node_name.clone(),
        node.config.file_check_frequency,
    );
    tokio::spawn(source.run(tx));
    let (api_tx, mut api_rx) = watch::channel::<source::Desired>(None);
    let kubelet = crate::kubelet::Kubelet::new(node.clone());
    let api_source = match api_kubeconfig(&node.config, &paths, &kubelet).await? {
        Api::Server(kubeconfig) => {
            let client = source::api::client(&kubeconfig).await?;
            kubelet.set_token_reviewer(client.clone());
            let _ = node.api.set(client.clone());
            let events = node.events_rx.lock().expect("events lock").take();
            let api = source::api::ApiSource::new(client, node.clone());
            tokio::spawn(async move {
                if let Some(events) = events {
                    api.run(api_tx, events).await;
                }
            });
            true
        }
        Api::None => false,
        // Its pods are neither run nor deleted: the source never lists.
        Api::Unavailable => true,
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let heartbeat = Arc::new(crate::kubelet::healthz::Heartbeat::default());
    heartbeat.beat();
    if node.config.healthz_port != 0 {
        let at =
            std::net::SocketAddr::new(node.config.healthz_bind_address, node.config.healthz_port);
        match tokio::net::TcpListener::bind(at).await {
            Ok(listener) => {
                tokio::spawn(crate::kubelet::healthz::serve(listener, heartbeat.clone()));
            }
            // As kubelet: the node runs without its health endpoint rather than not at all.
            Err(e) => error!(address = %at, error = %e, "healthz: cannot listen"),
        }
    }
    // The main loop comes round at least this often: the health check and systemd's watchdog
    // see it alive.
    let period = notifier
        .keepalive
        .map_or(crate::kubelet::healthz::TICK, |k| {
            k.min(crate::kubelet::healthz::TICK)
        });
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    notifier.ready();
    let mut reconcile = true;
    loop {
        if reconcile {
            let files = files_rx.borrow_and_update().clone();
            let api = api_rx.borrow_and_update().clone();
            if let Some(mut desired) = files {
                // Until the API source has listed its pods once, pods not from files are kept.
                let complete = !api_source || api.is_some();
                desired.extend(api.unwrap_or_default());
                workers.reconcile(&desired, complete);
            }
        }
        reconcile = true;
        tokio::select! {
            changed = files_rx.changed() => if changed.is_err() { break },
            Ok(()) = api_rx.changed() => {}
            Some(ended) = done_rx.recv() => {
                workers.finished(&ended);
                node.image_gc.notify_one();
            }
            _ = tick.tick() => {
                heartbeat.beat();
                notifier.watchdog();
                reconcile = false;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    notifier.stopping();
    info!("nodelet stopping; pods keep running");
    let _ = std::fs::remove_file(paths.control_socket());
    Ok(())
}

/// The API server's address in a kubeconfig, when it is an IP address (what pods are told in
/// `KUBERNETES_SERVICE_HOST`: nodelet has no service proxy for a cluster IP).
fn server_address(kubeconfig: &std::path::Path) -> Option<std::net::SocketAddr> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let context = kc.current_context.as_deref();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| Some(c.name.as_str()) == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kc
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .or(kc.clusters.first())?;
    let server: hyper::Uri = cluster.cluster.as_ref()?.server.as_deref()?.parse().ok()?;
    let host = server.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(std::net::SocketAddr::new(
        ip,
        server.port_u16().unwrap_or(443),
    ))
}

/// Where the node's API pods come from.
enum Api {
    /// The API server with this kubeconfig: the configured one, or the built-in API's.
    Server(PathBuf),
    /// None: static pods only.
    None,
    /// The built-in API's store cannot be read: the API is not served, and the pods it had are
    /// left as they run until an operator has seen to the store.
    Unavailable,
}

async fn api_kubeconfig(
    config: &Config,
    paths: &NodePaths,
    kubelet: &crate::kubelet::Kubelet,
) -> anyhow::Result<Api> {
    let node = &kubelet.node;
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        config.node_name(),
    ];
    hosts.extend(config.node_ip.clone());
    let address = config.api_server.address;
    if !address.ip().is_unspecified() {
        hosts.push(address.ip().to_string());
    }
    // Pods reach the built-in API at the pod network's gateway, under the names in-cluster
    // clients use for it.
    let gateway = node.network().ok().and_then(|n| n.gateway());
    if let Some(gw) = gateway {
        hosts.push(gw.to_string());
        for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
            hosts.push(name.to_owned());
        }
        hosts.push(format!("kubernetes.default.svc.{}", config.cluster_domain));
    }
    hosts.dedup();
    let pki = crate::apiserver::pki::Pki::ensure(&paths.root.join("pki"), &hosts)?;
    if config.port != 0 {
        start_kubelet_api(config, &pki, kubelet.clone()).await?;
    }
    if let Some(kubeconfig) = &config.kubeconfig {
        if let Some(service) = server_address(kubeconfig) {
            let _ = node.ctx.api_service.set(service);
        }
        return Ok(Api::Server(kubeconfig.clone()));
    }
    if !config.api_server.enabled {
        return Ok(Api::None);
    }
    let pod_address = gateway.map(|gw| std::net::SocketAddr::new(gw, address.port()));
    let started = crate::apiserver::start(crate::apiserver::Options {
        address,
        pod_address,
        database: paths.root.join("api.db"),
        pki: &pki,
        kubeconfig: config.api_server.kubeconfig.clone(),
        node_name: node.ctx.node_name.clone(),
        kubelet: Some(kubelet.clone()),
        dashboard: config.api_server.dashboard,
        dashboard_assets: config.api_server.dashboard_assets.clone(),
    })
    .await;
    match started {
        Ok(()) => {
            if let Some(a) = pod_address {
                let _ = node.ctx.api_service.set(a);
            }
            Ok(Api::Server(config.api_server.kubeconfig.clone()))
        }
        Err(e) if e.downcast_ref::<crate::apiserver::StoreError>().is_some() => {
            error!(
                error = %format!("{e:#}"),
                "the built-in API is not served; static pods and the kubelet API go on, and the \
                 API's pods are left running as they are"
            );
            Ok(Api::Unavailable)
        }
        Err(e) => Err(e.context("start the built-in API")),
    }
}

/// The kubelet API on `address:port`, with the configured (or made) serving certificate and the
/// configured client CA (or the built-in API's).
async fn start_kubelet_api(
    config: &Config,
    pki: &crate::apiserver::pki::Pki,
    kubelet: crate::kubelet::Kubelet,
) -> anyhow::Result<()> {
    use openssl::pkey::PKey;
    use openssl::x509::X509;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let (cert, key) = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(c), Some(k)) => (
            X509::from_pem(&read(c)?).with_context(|| format!("tlsCertFile {}", c.display()))?,
            PKey::private_key_from_pem(&read(k)?)
                .with_context(|| format!("tlsPrivateKeyFile {}", k.display()))?,
        ),
        (None, None) => (pki.kubelet_cert.clone(), pki.kubelet_key.clone()),
        _ => anyhow::bail!("config: tlsCertFile and tlsPrivateKeyFile go together"),
    };
    let client_ca = match &config.authentication.x509.client_ca_file {
        Some(f) => X509::stack_from_pem(&read(f)?)
            .with_context(|| format!("authentication.x509.clientCAFile {}", f.display()))?,
        None => vec![pki.ca.clone()],
    };
    let acceptor = crate::kubelet::acceptor(&cert, &key, &client_ca)?;
    let address = std::net::SocketAddr::new(config.address, config.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("kubelet API: listen on {address}"))?;
    tokio::spawn(crate::kubelet::serve(listener, acceptor, kubelet));
    Ok(())
}

/// Takes the hard limit on open files as the soft one (as Go programs such as kubelet do): each
/// connection, watch and pod costs descriptors, and the 1024 of a login shell is far too few.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// One agent per run directory: two would fight over the same shims.
pub fn lock_run_dir(paths: &NodePaths) -> anyhow::Result<Flock<std::fs::File>> {
    let path = paths.run.join("nodelet.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another nodelet is running with run directory {}",
            paths.run.display()
        )
    })
}

/// The pod workers by UID.
struct Workers {
    node: Arc<Node>,
    handles: HashMap<String, WorkerHandle>,
    /// UIDs whose worker is deleting its pod; such a UID comes back only once it has finished.
    deleting: HashSet<String>,
    done: mpsc::UnboundedSender<worker::Ended>,
    /// Numbers the workers, so that an ended worker's late `done` never removes a newer worker
    /// of the same UID (two workers on one pod would fight over its sandbox).
    next_id: u64,
}

impl Workers {
    fn spawn(&mut self, pod: Arc<Pod>, adopted: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.next_id += 1;
        let handle = worker::spawn(
            self.node.clone(),
            pod,
            adopted,
            self.next_id,
            self.done.clone(),
        );
        self.handles.insert(uid, handle);
    }

    /// A worker ended (its pod is deleted): forget it, so its UID can come back at once. A
    /// message from a worker that is no longer the UID's (already forgotten) changes nothing.
    fn finished(&mut self, ended: &worker::Ended) {
        if self
            .handles
            .get(&ended.uid)
            .is_some_and(|w| w.id == ended.id)
        {
            self.handles.remove(&ended.uid);
            self.deleting.remove(&ended.uid);
        }
    }

    /// Matches workers to the desired pods: new pods get a worker, changed ones an update, those
    /// the API is deleting (deletionTimestamp) or that vanished a graceful delete. Unless
    /// `complete`, vanished pods are kept (a source has not listed its pods yet).
    fn reconcile(&mut self, desired: &BTreeMap<String, Arc<Pod>>, complete: bool) {
        // A worker that ended without saying so (it panicked) is forgotten too.
        let ended: Vec<worker::Ended> = self
            .handles
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(uid, w)| worker::Ended {
                uid: uid.clone(),
                id: w.id,
            })
            .collect();
        for e in &ended {
            self.finished(e);
        }
        for (uid, pod) in desired {
            let deleting = pod
                .metadata
                .deletion_timestamp
                .is_some()
                .then(|| Desired::Delete {
                    grace: pod
                        .metadata
                        .deletion_grace_period_seconds
                        .map(|s| std::time::Duration::from_secs(s.max(0) as u64)),
                });
            match (self.handles.get(uid), deleting) {
                // A shorter grace reaches a worker that is already terminating.
                (Some(w), Some(delete)) => {
                    self.deleting.insert(uid.clone());
                    w.tx.send_if_modified(|d| match (&*d, &delete) {
                        (
                            Desired::Delete { grace: Some(old) },
                            Desired::Delete { grace: Some(new) },
                        ) if new >= old => false,
                        _ => {
                            *d = delete;
                            true
                        }
                    });
                }
                (None, Some(_)) => {}
                (Some(_), None) if self.deleting.contains(uid) => {} // comes back once the old worker finished
                (Some(w), None) => {
                    w.tx.send_if_modified(|d| match d {
                        Desired::Run(current) if Arc::ptr_eq(current, pod) => false,
                        _ => {
                            *d = Desired::Run(pod.clone());
                            true
                        }
                    });
                }
                (None, None) => self.spawn(pod.clone(), false),
            }
        }
        for (uid, w) in &self.handles {
            // Until every source has listed, only what the manifest directory dropped goes (it
            // has listed: `desired` holds its pods), as kubelet applies each source's removals.
            let gone = !desired.contains_key(uid) && (complete || is_static(&w.tx.borrow()));
            if gone && self.deleting.insert(uid.clone()) {
                let _ = w.tx.send(Desired::Delete { grace: None });
            }
        }
    }
}

/// Whether a worker's pod came from the manifest directory (kubelet's `config.source` annotation).
fn is_static(desired: &Desired) -> bool {
    match desired {
        Desired::Run(pod) => pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.source"))
            .is_some_and(|s| s == "file"),
        Desired::Delete { .. } => false,
    }
}

/// Finds pods a previous agent left: live shims get a worker that adopts them as they are;
/// remains without a live shim or without a record are torn down.
async fn adopt(workers: &mut Workers) {
    let node = workers.node.clone();
    let paths = &node.ctx.paths;
    let mut uids: Vec<String> = Vec::new();
    for dir in [paths.shims(), paths.pods_root(), paths.api_volumes()] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(uid) = entry.file_name().to_str() {
                if !uids.iter().any(|u| u == uid) {
                    uids.push(uid.to_owned());
                }
            }
        }
    }
    for uid in uids {
        let record = match std::fs::read(paths.pod_record(&uid)) {
            Ok(data) => serde_json::from_slice::<Pod>(&data).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Unreadable now (EMFILE, EIO) is not missing: leave the pod alone.
            Err(e) => {
                error!(pod_uid = %uid, error = %e, "read pod record; leaving the pod as it is");
                continue;
            }
        };
        // A shim too busy to answer right now is still adopted; its worker asks again.
        let alive = node.runtime.liveness(&uid).await == Liveness::Alive;
        match record {
            Some(pod) if alive => {
                info!(pod_uid = %uid, name = pod.metadata.name.as_deref().unwrap_or_default(), "re-adopting running pod");
                workers.spawn(Arc::new(pod), true);
            }
            _ => {
                warn!(pod_uid = %uid, "removing remains of a pod without a live shim");
                let errors = node.teardown_pod(&uid, Scope::Pod { logs: None }).await;
                for e in errors {
                    error!(pod_uid = %uid, error = %e, "teardown");
                }
            }
        }
    }
}

fn bind_control(paths: &NodePaths) -> anyhow::Result<UnixListener> {
    let socket = paths.control_socket();
    let _ = std::fs::remove_file(&socket);
    UnixListener::bind(&socket).with_context(|| format!("listen on {}", socket.display()))
}

async fn serve_control(listener: UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(ControlRequest::Pods) => {
                    let items = node
                        .pods
                        .lock()
                        .expect("pod map lock")
                        .values()
                        .map(Reported::to_pod)
                        .collect();
                    serde_json::to_vec(&PodList { items })
                }
                Err(e) => serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })),
            };
            if let Ok(mut reply) = reply {
                reply.push(b'\n');
                let _ = write.write_all(&reply).await;
            }
        });
    }
}
