//! kubelet's Summary API (`/stats/summary`, `stats/v1alpha1`) and its Prometheus twin
//! `/metrics/resource` (what metrics-server scrapes), from `crate::stats`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use nodelet_sandbox::cgroup::Hierarchy;
use serde::Serialize;

use crate::node::Node;
use crate::stats::{self, Memory};

#[derive(Serialize)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    pub fs: FsStats,
    pub runtime: RuntimeStats,
    pub rlimit: Rlimit,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    pub image_fs: FsStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rlimit {
    pub time: Timestamp,
    pub maxpid: u64,
    pub curproc: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    pub start_time: Timestamp,
    pub containers: Vec<ContainerStats>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(rename = "ephemeral-storage")]
    pub ephemeral_storage: FsStats,
    pub process_stats: ProcessStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStats {
    pub process_count: u64,
}

#[derive(Serialize, Clone)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: Timestamp,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub rootfs: FsStats,
    pub logs: FsStats,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Timestamp,
    /// What the rate was measured over (metrics.k8s.io's `window`; not in the Summary).
    #[serde(skip)]
    pub window: std::time::Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    pub time: Timestamp,
    /// The default interface's counters, inline as kubelet's.
    #[serde(flatten)]
    pub default: InterfaceStats,
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

#[derive(Serialize, Clone, Copy, Default)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    pub used_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    pub inodes_used: u64,
}

impl FsStats {
    fn of(fs: Option<stats::Filesystem>, used: (u64, u64), time: Timestamp) -> FsStats {
        FsStats {
            time: Some(time),
            available_bytes: fs.map(|f| f.available),
            capacity_bytes: fs.map(|f| f.capacity),
            used_bytes: used.0,
            inodes_free: fs.map(|f| f.inodes_free),
            inodes: fs.map(|f| f.inodes),
            inodes_used: used.1,
        }
    }
}

fn memory_stats(m: Memory, limit: Option<u64>, time: Timestamp) -> MemoryStats {
    MemoryStats {
        time,
        available_bytes: limit.map(|l| l.saturating_sub(m.working_set)),
        usage_bytes: m.usage,
        working_set_bytes: m.working_set,
        rss_bytes: m.rss,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

fn cpu_stats(node: &Node, cgroup: Option<&Path>, total: u64, time: Timestamp) -> CpuStats {
    let cpu = node.stats.cpu(cgroup, total);
    CpuStats {
        time,
        window: cpu.window,
        usage_nano_cores: cpu.nano_cores,
        usage_core_nano_seconds: cpu.total_nanos,
    }
}

/// A running container of a pod on this node, as the stats see it.
pub struct Running {
    pub name: String,
    pub id: String,
    pub started: Timestamp,
    pub cgroup: PathBuf,
    pub memory_limit: Option<u64>,
}

/// The pods on this node with their cgroups and running containers.
pub struct PodCgroups {
    pub pod_ref: PodRef,
    pub started: Timestamp,
    pub cgroup: PathBuf,
    pub containers: Vec<Running>,
}

/// Every pod the node runs (not host-network-only details: all pods), with its running
/// containers, from the statuses the workers reported.
pub fn pods(node: &Node) -> Vec<PodCgroups> {
    let pods = node.pods.lock().expect("pods lock");
    pods.iter()
        .filter_map(|(uid, reported)| {
            let pod = &reported.pod;
            let cgroup = crate::pod::build::pod_cgroup_path(&node.ctx, pod);
            let spec = pod.spec.as_ref()?;
            let containers = reported
                .status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|s| {
                    let started = s.state.as_ref()?.running.as_ref()?.started_at.as_ref()?.0;
                    let id = crate::pod::status::runtime_id(s.container_id.as_deref()?)?.to_owned();
                    let limit = spec
                        .containers
                        .iter()
                        .find(|c| c.name == s.name)
                        .and_then(|c| {
                            c.resources
                                .as_ref()?
                                .limits
                                .as_ref()?
                                .get("memory")
                                .cloned()
                        })
                        .and_then(|q| crate::pod::quantity::parse_bytes(&q.0));
                    Some(Running {
                        name: s.name.clone(),
                        cgroup: cgroup.join(&id),
                        id,
                        started,
                        memory_limit: limit,
                    })
                })
                .collect();
            Some(PodCgroups {
                pod_ref: PodRef {
                    name: pod.metadata.name.clone()?,
                    namespace: pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    uid: uid.clone(),
                },
                started: reported
                    .status
                    .start_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or_else(Timestamp::now),
                cgroup,
                containers,
            })
        })
        .collect()
}

/// The cgroups whose CPU the sampler follows: every pod's and running container's.
pub fn cgroups(pods: &[PodCgroups]) -> Vec<PathBuf> {
    pods.iter()
        .flat_map(|p| {
            std::iter::once(p.cgroup.clone()).chain(p.containers.iter().map(|c| c.cgroup.clone()))
        })
        .collect()
}

pub fn summary(node: &Node) -> Summary {
    let hierarchy = Hierarchy::detect();
    let now = Timestamp::now();
    let paths = &node.ctx.paths;
    let root_fs = stats::filesystem(&paths.root);
    let (node_memory, capacity) = stats::node_memory().unwrap_or_default();
    let node_stats = NodeStats {
        node_name: node.ctx.node_name.clone(),
        start_time: stats::boot_time(),
        cpu: cpu_stats(node, None, stats::node_cpu().unwrap_or(0), now),
        memory: memory_stats(node_memory, Some(capacity), now),
        network: None,
        fs: FsStats::of(
            root_fs,
            root_fs.map_or((0, 0), |f| {
                (f.capacity - f.available, f.inodes - f.inodes_free)
            }),
            now,
        ),
        runtime: RuntimeStats {
            image_fs: FsStats::of(
                stats::filesystem(&paths.images()),
                node.disk_usage.of(&paths.images()),
                now,
            ),
        },
        rlimit: Rlimit {
            time: now,
            maxpid: std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            // What kubelet reports: sysinfo(2)'s count of tasks (threads, on Linux), one
            // call rather than a walk of /proc.
            curproc: nix::sys::sysinfo::sysinfo()
                .map(|i| i.process_count() as u64)
                .unwrap_or(0),
        },
    };
    let log_fs = stats::filesystem(&paths.logs);
    let pods = pods(node)
        .into_iter()
        .map(|p| pod_stats(node, hierarchy, p, (root_fs, log_fs), now))
        .collect();
    Summary {
        node: node_stats,
        pods,
    }
}

fn pod_stats(
    node: &Node,
    hierarchy: Hierarchy,
    p: PodCgroups,
    (root_fs, log_fs): (Option<stats::Filesystem>, Option<stats::Filesystem>),
    now: Timestamp,
) -> PodStats {
    let paths = &node.ctx.paths;
    // Each container's processes, read once (for the pod's network and its process count).
    let pids: Vec<Vec<i32>> = p
        .containers
        .iter()
        .map(|c| stats::cgroup_pids(hierarchy, &c.cgroup))
        .collect();
    let pod_logs = paths.pod_logs(&p.pod_ref.namespace, &p.pod_ref.name, &p.pod_ref.uid);
    let mut ephemeral = (0, 0);
    let containers: Vec<ContainerStats> = p
        .containers
        .iter()
        .map(|c| {
            let rootfs = node
                .disk_usage
                .of(&paths.container_dir(&p.pod_ref.uid, &c.id).join("upper"));
            let logs = node.disk_usage.of(&pod_logs.join(&c.name));
            ephemeral.0 += rootfs.0 + logs.0;
            ephemeral.1 += rootfs.1 + logs.1;
            ContainerStats {
                name: c.name.clone(),
                start_time: c.started,
                cpu: cpu_stats(
                    node,
                    Some(&c.cgroup),
                    stats::cgroup_cpu(hierarchy, &c.cgroup).unwrap_or(0),
                    now,
                ),
                memory: memory_stats(
                    stats::cgroup_memory(hierarchy, &c.cgroup).unwrap_or_default(),
                    c.memory_limit,
                    now,
                ),
                rootfs: FsStats::of(root_fs, rootfs, now),
                logs: FsStats::of(log_fs, logs, now),
            }
        })
        .collect();
    let empty_dirs = node.disk_usage.of(&paths
        .pod_root(&p.pod_ref.uid)
        .join("volumes/kubernetes.io~empty-dir"));
    ephemeral.0 += empty_dirs.0;
    ephemeral.1 += empty_dirs.1;
    // The pod's network is what one of its processes sees (every container shares it).
    let pid = pids.iter().find_map(|p| p.first().copied());
    let network = pid
        .map(stats::interfaces)
        .filter(|i| !i.is_empty())
        .map(|all| {
            let all: Vec<InterfaceStats> = all
                .into_iter()
                .map(|i| InterfaceStats {
                    name: i.name,
                    rx_bytes: i.rx_bytes,
                    rx_errors: i.rx_errors,
                    tx_bytes: i.tx_bytes,
                    tx_errors: i.tx_errors,
                })
                .collect();
            let default = all
                .iter()
                .find(|i| i.name == "eth0")
                .unwrap_or(&all[0])
                .clone();
            NetworkStats {
                time: now,
                default,
                interfaces: all,
            }
        });
    let memory = stats::cgroup_memory(hierarchy, &p.cgroup).unwrap_or_default();
    PodStats {
        cpu: cpu_stats(
            node,
            Some(&p.cgroup),
            stats::cgroup_cpu(hierarchy, &p.cgroup).unwrap_or(0),
            now,
        ),
        memory: memory_stats(memory, None, now),
        network,
        ephemeral_storage: FsStats::of(root_fs, ephemeral, now),
        process_stats: ProcessStats {
            process_count: pids.iter().map(|p| p.len() as u64).sum(),
        },
        pod_ref: p.pod_ref,
        start_time: p.started,
        containers,
    }
}

/// `/metrics/resource`: kubelet's resource metrics in the Prometheus text format, with the
/// sample times in milliseconds as kubelet gives them.
pub fn resource_metrics(node: &Node) -> String {
    const FAMILIES: [(&str, &str, &str); 7] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
        ),
        (
            "container_start_time_seconds",
            "gauge",
            "Start time of the container since unix epoch in seconds",
        ),
        (
            "node_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the node in core-seconds",
        ),
        (
            "node_memory_working_set_bytes",
            "gauge",
            "Current working set of the node in bytes",
        ),
        (
            "pod_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the pod in core-seconds",
        ),
        (
            "pod_memory_working_set_bytes",
            "gauge",
            "Current working set of the pod in bytes",
        ),
    ];
    let hierarchy = Hierarchy::detect();
    let mut samples = Samples {
        ms: Timestamp::now().as_millisecond(),
        lines: Default::default(),
    };
    for p in pods(node) {
        let (ns, pod) = (escape(&p.pod_ref.namespace), escape(&p.pod_ref.name));
        for c in &p.containers {
            let labels = format!(
                "{{container=\"{}\",namespace=\"{ns}\",pod=\"{pod}\"}}",
                escape(&c.name)
            );
            samples.usage("container", &labels, hierarchy, &c.cgroup);
            samples.add(
                "container_start_time_seconds",
                &labels,
                c.started.as_second().to_string(),
            );
        }
        let labels = format!("{{namespace=\"{ns}\",pod=\"{pod}\"}}");
        samples.usage("pod", &labels, hierarchy, &p.cgroup);
    }
    if let Some(cpu) = stats::node_cpu() {
        samples.add(
            "node_cpu_usage_seconds_total",
            "",
            (cpu as f64 / 1e9).to_string(),
        );
    }
    if let Some((m, _)) = stats::node_memory() {
        samples.add(
            "node_memory_working_set_bytes",
            "",
            m.working_set.to_string(),
        );
    }
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
        for line in samples.lines.get(name).into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 0\n");
    out
}

/// `/metrics/resource`'s sample lines by family, all at one time.
struct Samples {
    ms: i64,
    lines: std::collections::HashMap<String, Vec<String>>,
}

impl Samples {
    fn add(&mut self, family: &str, labels: &str, value: String) {
        let line = format!("{family}{labels} {value} {}", self.ms);
        self.lines.entry(family.to_owned()).or_default().push(line);
    }

    /// A container's or pod's CPU (core-seconds) and memory working set, from its cgroup.
    fn usage(&mut self, scope: &str, labels: &str, hierarchy: Hierarchy, cgroup: &Path) {
        if let Some(cpu) = stats::cgroup_cpu(hierarchy, cgroup) {
            let value = (cpu as f64 / 1e9).to_string();
            self.add(&format!("{scope}_cpu_usage_seconds_total"), labels, value);
        }
        if let Some(m) = stats::cgroup_memory(hierarchy, cgroup) {
            let value = m.working_set.to_string();
            self.add(&format!("{scope}_memory_working_set_bytes"), labels, value);
        }
    }
}

/// A Prometheus label value, escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
