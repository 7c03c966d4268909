//! From a Pod and its images to what the shim runs: the sandbox spec, each container's spec, and
//! the files kubelet manages inside containers (/etc/hosts, /etc/hostname, /etc/resolv.conf).
//! Every policy decision of runtime-defaults.md that is not kernel mechanics lives here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use nodelet_sandbox::cgroup::{self, CgroupSpec};
use nodelet_sandbox::spec::{
    BindMount, ContainerSpec, ProcessSpec, RootfsSpec, SandboxSpec, DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};

use super::quantity;
use crate::images::Image;
use crate::paths::NodePaths;

/// A container that cannot be configured: kubelet's `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Node facts the build needs besides the pod.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub paths: NodePaths,
    pub node_name: String,
    /// Relative cgroup under which `kubepods` lives ("" for the hierarchy root).
    pub cgroup_root: PathBuf,
    pub log_rotation: nodelet_sandbox::logs::Rotation,
    /// `pids.max` of every pod's cgroup (`podPidsLimit`), `None` for no limit.
    pub pod_pids_limit: Option<u64>,
    /// Where pods reach the API server: the `KUBERNETES_SERVICE_*` variables (set once the API
    /// is known).
    pub api_service: std::sync::OnceLock<std::net::SocketAddr>,
    /// kubelet's `seccompDefault`.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are (`<rootDir>/seccomp`).
    pub seccomp_dir: PathBuf,
}

pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

pub fn pod_spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("validated pods have a spec")
}

/// The kernel hostname of the pod: `spec.hostname` or the name, cut to 63 characters.
pub fn hostname(pod: &Pod) -> String {
    // A hostNetwork pod is in the node's UTS namespace: its hostname is the node's.
    if pod_spec(pod).host_network == Some(true) {
        if let Ok(h) = nix::unistd::gethostname() {
            return h.to_string_lossy().into_owned();
        }
    }
    let name = pod_spec(pod)
        .hostname
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.']).to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The `status.qosClass` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

fn resource(c: &Container, kind: &str, name: &str) -> Option<String> {
    let res = c.resources.as_ref()?;
    let list = if kind == "limits" {
        &res.limits
    } else {
        &res.requests
    };
    list.as_ref()?.get(name).map(|q| q.0.clone())
}

/// Requests default to limits, as the API server's defaulting does.
fn request(c: &Container, name: &str) -> Option<String> {
    resource(c, "requests", name).or_else(|| resource(c, "limits", name))
}

/// Every container of the pod: init containers (and sidecars), then the app containers.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// kubelet's `GetPodQOS`, over every container, init containers included.
pub fn qos(spec: &PodSpec) -> Qos {
    let any = all_containers(spec).any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| resource(c, "limits", r).is_some() || resource(c, "requests", r).is_some())
    });
    if !any {
        return Qos::BestEffort;
    }
    let guaranteed = all_containers(spec).all(|c| {
        ["cpu", "memory"]
            .iter()
            .all(|r| match (resource(c, "limits", r), request(c, r)) {
                (Some(l), Some(q)) => l == q,
                _ => false,
            })
    });
    if guaranteed {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

pub fn pod_cgroup_path(node: &NodeContext, pod: &Pod) -> PathBuf {
    let base = node.cgroup_root.join("kubepods");
    let tier = match qos(pod_spec(pod)) {
        Qos::Guaranteed => base,
        Qos::Burstable => base.join("burstable"),
        Qos::BestEffort => base.join("besteffort"),
    };
    tier.join(format!("pod{}", pod_uid(pod)))
}

/// A container's cgroup numbers (kubelet's `MilliCPUToQuota` / `MilliCPUToShares`).
fn container_cgroup(c: &Container, path: PathBuf) -> CgroupSpec {
    let cpu_shares = request(c, "cpu")
        .and_then(|q| quantity::parse_millicpu(&q))
        .map(cgroup::millicpu_to_shares);
    CgroupSpec {
        path,
        memory_limit: resource(c, "limits", "memory").and_then(|q| quantity::parse_bytes(&q)),
        cpu_quota_us: resource(c, "limits", "cpu")
            .and_then(|q| quantity::parse_millicpu(&q))
            .map(cgroup::millicpu_to_quota),
        cpu_shares,
        cpu_weight: cpu_shares.map(cgroup::shares_to_weight),
        pids_limit: None,
        devices: Some(nodelet_sandbox::devices::default_rules()),
    }
}

/// The pod's effective value of one resource, by kubelet's rule (`PodRequests`/`PodLimits`):
/// the larger of the app containers' sum (with the sidecars, which run beside them) and each
/// init container's own value (with the sidecars started before it). `None` when some
/// container has none (no pod limit then).
fn effective(spec: &PodSpec, value: impl Fn(&Container) -> Option<u64>) -> Option<u64> {
    let mut sidecars = 0u64;
    let mut init_max = 0u64;
    for c in spec.init_containers.iter().flatten() {
        let v = value(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars += v;
            init_max = init_max.max(sidecars);
        } else {
            init_max = init_max.max(v + sidecars);
        }
    }
    let apps = spec.containers.iter().map(&value).sum::<Option<u64>>()?;
    Some((apps + sidecars).max(init_max))
}

/// kubelet's `ResourceConfigForPod`: limits only when every container has one.
pub fn sandbox_spec(
    node: &NodeContext,
    pod: &Pod,
    user_namespace: Option<nodelet_sandbox::spec::IdMap>,
) -> SandboxSpec {
    let spec = pod_spec(pod);
    let limit = |c: &Container| container_cgroup(c, PathBuf::new());
    let memory_limit = effective(spec, |c| limit(c).memory_limit);
    let cpu_quota_us = effective(spec, |c| limit(c).cpu_quota_us);
    let millicpu = |c: &Container| {
        Some(
            request(c, "cpu")
                .and_then(|q| quantity::parse_millicpu(&q))
                .unwrap_or(0),
        )
    };
    let shares = effective(spec, millicpu).unwrap_or(0);
    SandboxSpec {
        pod_uid: pod_uid(pod).to_owned(),
        hostname: hostname(pod),
        share_pid: spec.share_process_namespace == Some(true),
        host_network: spec.host_network == Some(true),
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        sysctls: spec
            .security_context
            .iter()
            .flat_map(|s| s.sysctls.iter().flatten())
            .map(|s| (super::admission::normalize(&s.name), s.value.clone()))
            .collect(),
        cgroup: Some(CgroupSpec {
            path: pod_cgroup_path(node, pod),
            memory_limit,
            cpu_quota_us,
            cpu_shares: Some(cgroup::millicpu_to_shares(shares)),
            cpu_weight: Some(cgroup::shares_to_weight(cgroup::millicpu_to_shares(shares))),
            pids_limit: node.pod_pids_limit,
            devices: None,
        }),
        user_namespace,
    }
}

/// Everything `container_spec` needs for one instance.
pub struct Instance<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a Image,
    pub id: &'a str,
    pub attempt: u32,
    /// What the downward API reads that the node knows, not the spec.
    pub facts: &'a Facts,
}

/// The node's facts about a pod for the downward API (`status.podIP`, limits left unset).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// The node's allocatable CPU (millicores) and memory and ephemeral storage (bytes): the
    /// value of a limit a container does not set.
    pub allocatable_millicpu: u64,
    pub allocatable_memory: u64,
    pub allocatable_storage: u64,
    /// The ConfigMaps and Secrets the container's environment names, read from the API (`None`:
    /// there is no such object).
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Where pods reach the API server (`KUBERNETES_SERVICE_HOST` and the others).
    pub api_service: Option<std::net::SocketAddr>,
}

/// The pod's ephemeral containers, each as the container it runs as.
pub fn ephemeral_containers(pod: &Pod) -> Vec<Container> {
    pod_spec(pod)
        .ephemeral_containers
        .iter()
        .flatten()
        .map(ephemeral_container)
        .collect()
}

/// An ephemeral container as the container it runs as (the same fields; kube-apiserver has
/// refused those an ephemeral container may not have).
pub fn ephemeral_container(e: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    let mut value = serde_json::to_value(e).expect("serialise an ephemeral container");
    if let Some(fields) = value.as_object_mut() {
        fields.remove("targetContainerName");
    }
    serde_json::from_value(value).expect("an ephemeral container is a container")
}

/// The ConfigMaps and Secrets a container's `env` and `envFrom` name.
pub fn env_sources(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut maps, mut secrets) = (Vec::new(), Vec::new());
    for var in c.env.iter().flatten() {
        let from = var.value_from.as_ref();
        if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
            maps.push(r.name.clone());
        }
        if let Some(r) = from.and_then(|f| f.secret_key_ref.as_ref()) {
            secrets.push(r.name.clone());
        }
    }
    for src in c.env_from.iter().flatten() {
        if let Some(r) = &src.config_map_ref {
            maps.push(r.name.clone());
        }
        if let Some(r) = &src.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for list in [&mut maps, &mut secrets] {
        list.sort();
        list.dedup();
    }
    (maps, secrets)
}

/// kubelet's rule for an environment variable name from `envFrom`: a C identifier-like name
/// (`IsEnvVarName`: letters, digits, `_`, `-`, `.`, not starting with a digit).
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

pub fn container_spec(
    node: &NodeContext,
    inst: &Instance<'_>,
) -> Result<ContainerSpec, ConfigError> {
    let (pod, c, image) = (inst.pod, inst.container, inst.image);
    let uid = pod_uid(pod);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let dir = node.paths.container_dir(uid, inst.id);
    let security = c.security_context.clone().unwrap_or_default();
    let privileged = security.privileged == Some(true);
    // procMount: Unmasked (validated to come with hostUsers: false): /proc as the kernel has it.
    let unmasked = security.proc_mount.as_deref() == Some("Unmasked");
    let mut env = environment(pod, c, image, inst.facts)?;
    // containerd's `WithTTY`: a terminal says what it is.
    if c.tty == Some(true) && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let process_env = env.clone();
    let caps = capabilities(c, privileged);
    let profile =
        super::seccomp::choose(pod, c, privileged, node.seccomp_default, &node.seccomp_dir);
    let seccomp = super::seccomp::program(&profile, &caps)?;
    Ok(ContainerSpec {
        id: inst.id.to_owned(),
        name: c.name.clone(),
        attempt: inst.attempt,
        rootfs: RootfsSpec {
            layers: image.layers.clone(),
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            mount_point: dir.join("rootfs"),
            read_only: security.read_only_root_filesystem == Some(true),
        },
        process: ProcessSpec {
            args: command(c, image, &env)?,
            cwd: PathBuf::from(
                c.working_dir
                    .clone()
                    .or_else(|| image_config(image).and_then(|cfg| cfg.working_dir().clone()))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "/".into()),
            ),
            capabilities: caps,
            no_new_privileges: !privileged && security.allow_privilege_escalation != Some(true),
            masked_paths: if privileged || unmasked {
                vec![]
            } else {
                DEFAULT_MASKED_PATHS.iter().map(PathBuf::from).collect()
            },
            readonly_paths: if privileged || unmasked {
                vec![]
            } else {
                DEFAULT_READONLY_PATHS.iter().map(PathBuf::from).collect()
            },
            env,
            seccomp,
            ..user(pod, c, image)?
        },
        mounts: mounts(node, pod, c, inst.id, &env_map(&process_env))?,
        cgroup: Some(container_cgroup(
            c,
            pod_cgroup_path(node, pod).join(inst.id),
        )),
        log_path: node
            .paths
            .container_log(namespace, name, uid, &c.name, inst.attempt),
        log_rotation: node.log_rotation,
        labels: Default::default(),
        target: None,
        stdin: c.stdin == Some(true),
        tty: c.tty == Some(true),
    })
}

fn image_config(image: &Image) -> Option<&oci_spec::image::Config> {
    image.config.config().as_ref()
}

/// command/args over the image's Entrypoint/Cmd, with `$(VAR)` expanded (kubelet `ExpandContainerCommandAndArgs`).
fn command(c: &Container, image: &Image, env: &[String]) -> Result<Vec<String>, ConfigError> {
    let cfg = image_config(image);
    let entrypoint = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let argv: Vec<String> = match (&c.command, &c.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => entrypoint.iter().chain(&cmd).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(ConfigError(format!(
            "container {:?} has no command and its image none either",
            c.name
        )));
    }
    let vars = env_map(env);
    Ok(argv.iter().map(|a| expand(a, &vars)).collect())
}

fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Image env, then PATH and HOSTNAME defaults, then the pod's env on top (later wins).
fn environment(
    pod: &Pod,
    c: &Container,
    image: &Image,
    facts: &Facts,
) -> Result<Vec<String>, ConfigError> {
    let mut env = Env::default();
    let default_path = DEFAULT_PATH.split_once('=').expect("constant");
    env.set(default_path.0, default_path.1.to_owned());
    for entry in image_config(image)
        .and_then(|cfg| cfg.env().clone())
        .unwrap_or_default()
    {
        if let Some((k, v)) = entry.split_once('=') {
            env.set(k, v.to_owned());
        }
    }
    env.set("HOSTNAME", hostname(pod));
    // The `kubernetes` service's variables, which every pod gets whatever enableServiceLinks
    // says (kubelet's master services); the pod's own env may override them.
    if let Some(api) = facts.api_service {
        let (host, port) = (api.ip().to_string(), api.port());
        let url = format!(
            "tcp://{}:{port}",
            if api.is_ipv6() {
                format!("[{host}]")
            } else {
                host.clone()
            }
        );
        env.set("KUBERNETES_SERVICE_HOST", host.clone());
        env.set("KUBERNETES_SERVICE_PORT", port.to_string());
        env.set("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string());
        env.set("KUBERNETES_PORT", url.clone());
        env.set(&format!("KUBERNETES_PORT_{port}_TCP"), url);
        env.set(&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into());
        env.set(
            &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
            port.to_string(),
        );
        env.set(&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host);
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    // envFrom first, in order (a later source wins), then env on top (kubelet's order).
    for src in c.env_from.iter().flatten() {
        let (found, kind, name, optional) = match (&src.config_map_ref, &src.secret_ref) {
            (Some(r), _) => (
                facts.config_maps.get(&r.name),
                "configmap",
                &r.name,
                r.optional,
            ),
            (_, Some(r)) => (facts.secrets.get(&r.name), "secret", &r.name, r.optional),
            _ => continue,
        };
        let Some(data) = found.cloned().flatten() else {
            if optional == Some(true) {
                continue;
            }
            return Err(ConfigError(format!("{kind} {name:?} not found")));
        };
        let prefix = src.prefix.clone().unwrap_or_default();
        for (key, value) in data {
            let key = format!("{prefix}{key}");
            // Invalid names are skipped, as kubelet skips them.
            if is_env_name(&key) {
                env.set(&key, value);
            }
        }
    }
    for var in c.env.iter().flatten() {
        let from = var.value_from.as_ref();
        let keyed = from
            .and_then(|f| f.config_map_key_ref.as_ref())
            .map(|r| {
                (
                    &facts.config_maps,
                    "configmap",
                    "ConfigMap",
                    &r.name,
                    &r.key,
                    r.optional,
                )
            })
            .or_else(|| {
                from.and_then(|f| f.secret_key_ref.as_ref()).map(|r| {
                    (
                        &facts.secrets,
                        "secret",
                        "Secret",
                        &r.name,
                        &r.key,
                        r.optional,
                    )
                })
            });
        let value = match keyed {
            Some((objects, kind, title, name, key, optional)) => {
                let optional = optional == Some(true);
                let Some(data) = objects.get(name).cloned().flatten() else {
                    if optional {
                        continue;
                    }
                    return Err(ConfigError(format!("{kind} {name:?} not found")));
                };
                match data.get(key) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {key} in {title} {namespace}/{name}"
                        )))
                    }
                }
            }
            None => expand(&env_value(pod, c, var, facts)?, &env.values),
        };
        env.set(&var.name, value);
    }
    if !env.values.contains_key("HOME") {
        let home = if user(pod, c, image)?.uid == 0 {
            "/root"
        } else {
            "/"
        };
        env.set("HOME", home.to_owned());
    }
    Ok(env
        .order
        .iter()
        .map(|k| format!("{k}={}", env.values[k]))
        .collect())
}

/// Environment variables in first-definition order, later definitions winning.
#[derive(Default)]
struct Env {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Env {
    fn set(&mut self, key: &str, value: String) {
        if self.values.insert(key.to_owned(), value).is_none() {
            self.order.push(key.to_owned());
        }
    }
}

fn env_value(pod: &Pod, c: &Container, var: &EnvVar, facts: &Facts) -> Result<String, ConfigError> {
    let Some(from) = &var.value_from else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    if let Some(r) = &from.resource_field_ref {
        return resource_value(pod, c, r, facts)
            .map_err(|why| ConfigError(format!("env {:?}: {why}", var.name)));
    }
    let Some(field) = &from.field_ref else {
        return Err(ConfigError(format!(
            "env {:?}: valueFrom has no source",
            var.name
        )));
    };
    field_value(pod, &field.field_path, facts).ok_or_else(|| {
        ConfigError(format!(
            "env {:?}: unsupported fieldRef {:?}",
            var.name, field.field_path
        ))
    })
}

/// A downward API `fieldRef`'s value (`None`: not a field the downward API offers).
/// `metadata.labels` and `metadata.annotations` are whole maps, formatted as kubelet's
/// `FormatMap` does (`key="value"` lines, sorted), for volumes.
pub fn field_value(pod: &Pod, path: &str, facts: &Facts) -> Option<String> {
    let meta = &pod.metadata;
    let from_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned())
    };
    let whole = |map: &Option<BTreeMap<String, String>>| {
        let lines: Vec<String> = map
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", go_quote(v)))
            .collect();
        Some(lines.join("\n"))
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => whole(&meta.labels),
        "metadata.annotations" => whole(&meta.annotations),
        "spec.nodeName" => pod_spec(pod).node_name.clone(),
        "spec.serviceAccountName" => pod_spec(pod).service_account_name.clone(),
        // The node's own view: the API's copy of the status may not have them yet.
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => from_map(&meta.labels, "metadata.labels['")
            .or_else(|| from_map(&meta.annotations, "metadata.annotations['"))?,
    };
    Some(value.unwrap_or_default())
}

/// Go's `%q` of a string: double-quoted, with `\\`, `\"` and control characters escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The downward API's `resourceFieldRef` (kubelet's `ExtractContainerResourceValue`): a
/// container's limit or request, in units of `divisor`, rounded up; a limit not set is the
/// node's allocatable amount.
pub fn resource_value(
    pod: &Pod,
    own: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &Facts,
) -> Result<String, String> {
    let c = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => own,
        Some(name) => crate::pod::status::containers(pod)
            .map(|(c, _)| c)
            .find(|c| c.name == name)
            .ok_or_else(|| format!("container {name:?} not found"))?,
    };
    let (kind, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    let cpu = name == "cpu";
    let divisor = r.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1");
    let parse = |q: &str| {
        if cpu {
            quantity::parse_millicpu(q).map(u128::from)
        } else {
            quantity::parse_bytes(q).map(u128::from)
        }
    };
    let divisor = parse(divisor)
        .filter(|d| *d > 0)
        .ok_or_else(|| format!("invalid divisor {divisor:?}"))?;
    let set = match kind {
        "limits" => resource(c, "limits", name),
        "requests" => request(c, name),
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    let value = match (set, kind, name) {
        (Some(q), ..) => parse(&q).ok_or_else(|| format!("invalid quantity {q:?}"))?,
        (None, "limits", "cpu") => u128::from(facts.allocatable_millicpu),
        (None, "limits", "memory") => u128::from(facts.allocatable_memory),
        (None, "limits", "ephemeral-storage") => u128::from(facts.allocatable_storage),
        (None, "requests", "cpu" | "memory" | "ephemeral-storage") => 0,
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    Ok(value.div_ceil(divisor).to_string())
}

/// The node's allocatable CPU, memory and root file system (what `resourceFieldRef` reports
/// for limits a container leaves unset).
pub fn node_allocatable(root: &Path) -> (u64, u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let storage = nix::sys::statvfs::statvfs(root)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    (cpus * 1000, memory, storage)
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` escapes, the rest is kept.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(close) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + close];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[..close + 3]),
            }
            rest = &rest[close + 3..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// runAsUser/runAsGroup (container over pod) over the image's numeric `USER`.
fn user(pod: &Pod, c: &Container, image: &Image) -> Result<ProcessSpec, ConfigError> {
    let pod_sc = pod_spec(pod).security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let image_user = image_config(image)
        .and_then(|cfg| cfg.user().clone())
        .unwrap_or_default();
    let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    // kubelet's verifyRunAsNonRoot, before the runtime resolves anything.
    if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) {
        let who = format!(
            "(pod: \"{}_{}({})\", container: {})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod_uid(pod),
            c.name
        );
        let image_name = image_user.split(':').next().unwrap_or_default();
        match run_as_user {
            Some(0) => {
                return Err(ConfigError(format!(
                    "container's runAsUser breaks non-root policy {who}"
                )))
            }
            Some(_) => {}
            None if !image_name.is_empty() && image_name.parse::<u32>().is_err() => {
                return Err(ConfigError(format!("container has runAsNonRoot and image has non-numeric user ({image_name}), cannot verify user is non-root {who}")));
            }
            None if image_name.parse::<u32>().unwrap_or(0) == 0 => {
                return Err(ConfigError(format!(
                    "container has runAsNonRoot and image will run as root {who}"
                )))
            }
            None => {}
        }
    }
    // containerd's WithUser: numbers as they are, names from the image's /etc/passwd and
    // /etc/group; a user's primary group when no group is given.
    let (image_uid, image_gid) = match image_user.split_once(':') {
        _ if image_user.is_empty() => (0, None),
        Some((u, g)) => (
            resolve(image, u, "passwd")?.0,
            Some(resolve(image, g, "group")?.0),
        ),
        None => {
            let (uid, gid) = resolve(image, &image_user, "passwd")?;
            (uid, gid)
        }
    };
    let uid = run_as_user.map(|u| u as u32).unwrap_or(image_uid);
    let gid = sc
        .run_as_group
        .or(pod_sc.run_as_group)
        .map(|g| g as u32)
        .or(image_gid)
        .unwrap_or(0);
    let mut additional: Vec<u32> = pod_sc
        .supplemental_groups
        .iter()
        .flatten()
        .map(|g| *g as u32)
        .collect();
    additional.extend(pod_sc.fs_group.map(|g| g as u32));
    // A user namespace maps ids 0-65535: the process's must be among them.
    if pod_spec(pod).host_users == Some(false) {
        let size = super::userns::IDS_PER_POD;
        let outside = [("runAsUser", uid), ("runAsGroup", gid)]
            .into_iter()
            .chain(
                additional
                    .iter()
                    .map(|g| ("supplementalGroups/fsGroup", *g)),
            )
            .find(|(_, id)| *id >= size);
        if let Some((what, id)) = outside {
            return Err(ConfigError(format!(
                "{what} {id} is outside the pod's user namespace, which maps ids 0-{} (hostUsers: false)",
                size - 1
            )));
        }
    }
    Ok(ProcessSpec {
        args: vec![],
        env: vec![],
        cwd: PathBuf::from("/"),
        uid,
        gid,
        additional_gids: additional,
        capabilities: vec![],
        no_new_privileges: true,
        masked_paths: vec![],
        readonly_paths: vec![],
        seccomp: None,
    })
}

/// A user or group of the image: a number, or a name looked up in the image's `/etc/passwd`
/// (`kind` "passwd": uid and primary gid) or `/etc/group` ("group": gid).
fn resolve(image: &Image, name: &str, kind: &str) -> Result<(u32, Option<u32>), ConfigError> {
    if let Ok(id) = name.parse::<u32>() {
        // A numeric user's primary group, as containerd finds it, when passwd lists it.
        let gid = (kind == "passwd")
            .then(|| image_file(image, "etc/passwd"))
            .flatten()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 3 && f[2] == name)
                        .then(|| f[3].parse().ok())
                        .flatten()
                })
            });
        return Ok((id, gid));
    }
    let entries = image_file(image, &format!("etc/{kind}")).unwrap_or_default();
    let found = entries.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| {
            let id = f[2].parse::<u32>().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok());
            Some((id, if kind == "passwd" { gid } else { None }))
        })?
    });
    found.ok_or_else(|| {
        let what = if kind == "passwd" { "user" } else { "group" };
        ConfigError(format!(
            "unable to find {what} {name}: no matching entries in {kind} file"
        ))
    })
}

/// A file of the image, for `/etc/passwd` and `/etc/group`: from the topmost layer that has the
/// name, resolved inside that layer (`RESOLVE_IN_ROOT`: an image's symlink cannot lead to the
/// node's files), only if it is a regular file of at most 1 MiB. Anything else there (a
/// whiteout, a device, a FIFO) ends the search: the image has no such file.
fn image_file(image: &Image, path: &str) -> Option<String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    for layer in image.layers.iter().rev() {
        let Ok(root) = nix::fcntl::open(
            layer.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            continue;
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match openat2(&root, path, how) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => continue,
            Err(_) => return None,
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX {
            return None;
        }
        let mut text = String::new();
        file.take(MAX).read_to_string(&mut text).ok()?;
        return Some(text);
    }
    None
}

/// containerd's rules: `ALL` in add or drop first, then the named ones.
fn capabilities(c: &Container, privileged: bool) -> Vec<String> {
    const ALL: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    if privileged {
        return ALL.iter().map(|s| s.to_string()).collect();
    }
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_default();
    let norm = |n: &String| {
        let up = n.to_ascii_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let add = caps.add.unwrap_or_default();
    let drop = caps.drop.unwrap_or_default();
    let mut set: Vec<String> = if add.iter().any(|a| a == "ALL") {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
    if drop.iter().any(|d| d == "ALL") {
        set.clear();
    }
    for a in add.iter().filter(|a| *a != "ALL").map(norm) {
        if !set.contains(&a) {
            set.push(a);
        }
    }
    let dropped: Vec<String> = drop.iter().filter(|d| *d != "ALL").map(norm).collect();
    set.retain(|c| !dropped.contains(c));
    set
}

/// Managed files first (unless a volume covers them), then volumes in spec order.
fn mounts(
    node: &NodeContext,
    pod: &Pod,
    c: &Container,
    id: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<BindMount>, ConfigError> {
    let uid = pod_uid(pod);
    let root = node.paths.pod_root(uid);
    let volume_mounts = c.volume_mounts.clone().unwrap_or_default();
    let covered = |path: &str| {
        volume_mounts
            .iter()
            .any(|m| m.mount_path.trim_end_matches('/') == path)
    };
    let mut out = Vec::new();
    for (file, dest) in [
        ("etc-hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if !covered(dest) {
            out.push(BindMount {
                source: root.join(file),
                destination: dest.into(),
                read_only: false,
            });
        }
    }
    // The file the container may leave its termination message in (kubelet mounts one per
    // instance at `terminationMessagePath`, /dev/termination-log unless set).
    let message_path = c
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/dev/termination-log");
    if !covered(message_path) {
        out.push(BindMount {
            source: crate::pod::worker::termination_path(&node.paths, uid, id),
            destination: message_path.into(),
            read_only: false,
        });
    }
    let volumes = pod_spec(pod).volumes.clone().unwrap_or_default();
    for (index, m) in volume_mounts.iter().enumerate() {
        let volume = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| ConfigError(format!("volume {:?} not found", m.name)))?;
        let mut read_only = m.read_only == Some(true);
        let mut source = if volume.empty_dir.is_some() {
            node.paths.empty_dir(uid, &volume.name)
        } else if let Some(hp) = &volume.host_path {
            host_path_source(&hp.path, hp.type_.as_deref().unwrap_or(""))?
        } else if super::projected::is_api_volume(volume) {
            // Read-only to the pod whatever the mount says (kubelet's ReadOnlyAPIDataVolumes):
            // the node owns their content.
            read_only = true;
            node.paths
                .volume_dir(uid, super::projected::plugin(volume), &volume.name)
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: unsupported type",
                m.name
            )));
        };
        let sub = match (m.sub_path.as_deref(), m.sub_path_expr.as_deref()) {
            (Some(p), _) if !p.is_empty() => Some(p.to_owned()),
            (_, Some(expr)) if !expr.is_empty() => {
                Some(super::subpath::expand(expr, env).map_err(ConfigError)?)
            }
            _ => None,
        };
        if let Some(sub) = sub.filter(|s| !s.is_empty()) {
            let target = node.paths.subpath(uid, &volume.name, &c.name, index);
            source = super::subpath::bind(&source, &sub, &target).map_err(ConfigError)?;
        }
        out.push(BindMount {
            source,
            destination: m.mount_path.clone().into(),
            read_only,
        });
    }
    Ok(out)
}

/// Checks (or creates) a hostPath source as its `type` says (kubelet's hostPath type checker).
fn host_path_source(path: &str, kind: &str) -> Result<PathBuf, ConfigError> {
    let p = Path::new(path);
    let err = |what: &str| ConfigError(format!("hostPath type check failed: {path} is not {what}"));
    match kind {
        "DirectoryOrCreate" if !p.exists() => std::fs::create_dir_all(p)
            .map_err(|e| ConfigError(format!("create hostPath {path}: {e}")))?,
        "FileOrCreate" if !p.exists() => {
            if let Some(parent) = p.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::File::create(p)
                .map_err(|e| ConfigError(format!("create hostPath {path}: {e}")))?;
        }
        "Directory" | "DirectoryOrCreate" if !p.is_dir() => return Err(err("a directory")),
        "File" | "FileOrCreate" if !p.is_file() => return Err(err("a file")),
        "" if !p.exists() => {
            // kubelet creates nothing for an unset type and the runtime creates a directory.
            std::fs::create_dir_all(p)
                .map_err(|e| ConfigError(format!("create hostPath {path}: {e}")))?
        }
        _ => {}
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        let mut p = super::super::manifest::parse(yaml.as_bytes()).unwrap();
        p.metadata.uid = Some("u1".into());
        p
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: BTreeMap<String, String> = [("A".to_owned(), "x".to_owned())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }

    #[test]
    fn qos_classes() {
        let be = pod("metadata: {name: p}\nspec: {containers: [{name: a, image: b}]}");
        assert_eq!(qos(pod_spec(&be)), Qos::BestEffort);
        let g = pod("metadata: {name: p}\nspec: {containers: [{name: a, image: b, resources: {limits: {cpu: 1, memory: 1Gi}}}]}");
        assert_eq!(qos(pod_spec(&g)), Qos::Guaranteed);
        let b = pod("metadata: {name: p}\nspec: {containers: [{name: a, image: b, resources: {limits: {memory: 1Gi}}}]}");
        assert_eq!(qos(pod_spec(&b)), Qos::Burstable);
    }

    #[test]
    fn capabilities_follow_containerd() {
        let c: Container = serde_yaml::from_str(
            "{name: a, securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}}",
        )
        .unwrap();
        assert_eq!(capabilities(&c, false), ["CAP_NET_BIND_SERVICE"]);
        let c: Container =
            serde_yaml::from_str("{name: a, securityContext: {capabilities: {drop: [kill]}}}")
                .unwrap();
        let caps = capabilities(&c, false);
        assert_eq!(caps.len(), 13);
        assert!(!caps.contains(&"CAP_KILL".to_owned()));
    }

    #[test]
    fn downward_api_resources_round_up_in_the_divisor_and_default_to_the_node() {
        let p = pod("metadata: {name: p}\nspec: {containers: [{name: a, image: b, resources: {limits: {memory: 100Mi, cpu: 250m}}}, {name: c, image: b}]}");
        let facts = Facts {
            allocatable_millicpu: 2000,
            allocatable_memory: 8 << 30,
            ..Facts::default()
        };
        let r = |resource: &str, divisor: Option<&str>, container: Option<&str>| {
            let sel = k8s_openapi::api::core::v1::ResourceFieldSelector {
                container_name: container.map(str::to_owned),
                resource: resource.into(),
                divisor: divisor
                    .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            };
            let own = &pod_spec(&p).containers[0];
            resource_value(&p, own, &sel, &facts)
        };
        assert_eq!(r("limits.memory", None, None).unwrap(), "104857600");
        assert_eq!(r("limits.memory", Some("1Mi"), None).unwrap(), "100");
        // 250m of CPU in whole cores rounds up to 1, in millicores is 250.
        assert_eq!(r("limits.cpu", None, None).unwrap(), "1");
        assert_eq!(r("limits.cpu", Some("1m"), None).unwrap(), "250");
        // Requests default to limits; a container without limits gets the node's.
        assert_eq!(r("requests.cpu", Some("1m"), None).unwrap(), "250");
        assert_eq!(r("limits.cpu", None, Some("c")).unwrap(), "2");
        assert_eq!(r("limits.memory", Some("1Gi"), Some("c")).unwrap(), "8");
        assert_eq!(r("requests.memory", None, Some("c")).unwrap(), "0");
        assert!(r("limits.cpu", None, Some("nope")).is_err());
    }
}
