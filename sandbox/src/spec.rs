//! What the agent asks the shim to run: the pod's sandbox and each container, fully resolved.
//!
//! The agent turns a Kubernetes Pod and an OCI image into these plain structures; the shim and the
//! container init only execute them, so every policy decision is made (and tested) in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The pod-level facts the shim needs when it starts, written as `config.json` in its directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SandboxSpec {
    pub pod_uid: String,
    /// Kernel hostname of the pod's UTS namespace (the pod name, cut to 63 characters).
    pub hostname: String,
    /// One PID namespace for the whole pod (`shareProcessNamespace: true`).
    pub share_pid: bool,
    /// The node's own namespaces instead of the pod's (`hostNetwork`, which brings the node's
    /// UTS namespace too, `hostPID`, `hostIPC`).
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_ipc: bool,
    /// Namespaced sysctls set in the pod's namespaces (`securityContext.sysctls`, admitted by
    /// the agent), dotted names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<(String, String)>,
    /// Pod-level cgroup, if resource control is on.
    pub cgroup: Option<crate::cgroup::CgroupSpec>,
    /// `hostUsers: false`: a user namespace of the pod's own, which owns its network, UTS and
    /// IPC namespaces; containers run in it, their layers and volumes idmapped into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_namespace: Option<IdMap>,
}

/// One user namespace's ids: ids `0..size` inside (uids and gids alike) are `host_id..` on the
/// node, as kubelet allocates them (65,536 per pod).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdMap {
    pub host_id: u32,
    pub size: u32,
}

impl IdMap {
    /// The node's id for `id` inside; `None` when the namespace does not map it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host_id + id)
    }
}

/// One container instance (one restart attempt of one container of the pod).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// 64 hex characters, unique per instance.
    pub id: String,
    pub name: String,
    /// The restart count this instance stands for (0 for the first).
    pub attempt: u32,
    pub rootfs: RootfsSpec,
    pub process: ProcessSpec,
    /// Bind mounts in the order they are made (managed files, volumes).
    pub mounts: Vec<BindMount>,
    pub cgroup: Option<crate::cgroup::CgroupSpec>,
    /// CRI log file the shim writes stdout and stderr to.
    pub log_path: PathBuf,
    /// When the log file is rotated, and how many files (the live one included) are kept.
    #[serde(default)]
    pub log_rotation: crate::logs::Rotation,
    /// Facts the agent needs back later (CRI labels, such as the container's spec hash); the shim
    /// keeps them in the instance's record and returns them with its status.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Run in this running container's PID namespace instead of one of its own (an ephemeral
    /// container's `targetContainerName`): the id of the target's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `stdin: true`: the process reads a FIFO (`<shim dir>/stdin-<id>`) that attach sessions
    /// write to, instead of /dev/null; it sees EOF once the shim closes its own end
    /// (`CloseStdin`, after the first session with `stdinOnce`).
    #[serde(default)]
    pub stdin: bool,
    /// `tty: true`: the process's standard streams are a terminal of the container's own devpts,
    /// its controlling terminal; the shim holds the other side, logs what comes out of it (as
    /// stdout) and hands it to attach sessions (`Terminal`), which write input to it and resize
    /// it. Takes the place of the stdin FIFO.
    #[serde(default)]
    pub tty: bool,
}

/// An overlayfs root: read-only unpacked layers below, this instance's own upper directory above.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RootfsSpec {
    /// Unpacked layer directories, lowest (base) layer first.
    pub layers: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Where the overlay is mounted, inside the container's own mount namespace only.
    pub mount_point: PathBuf,
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is resolved against `PATH` of `env` inside the container when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries, final (image env, pod env, defaults already merged).
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Capability names such as `CAP_CHOWN`, for the bounding, permitted and effective sets.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    /// Paths hidden (masked) and made read-only after pivot_root, as runc does.
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    /// The seccomp filter (compiled BPF, hex), none for `Unconfined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    pub read_only: bool,
}

/// The default capability set of containerd and Docker (`defaultUnixCaps`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// kubelet's masked paths (`pkg/securitycontext/util.go`), without the per-CPU thermal paths.
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// kubelet's read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A process to start inside a running container (`kubectl exec`), for `nodelet-shim exec`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecSpec {
    /// The container's first process (in the caller's PID namespace): its namespaces and cgroup
    /// are the ones joined.
    pub pid: i32,
    /// The container's own process settings with `args` replaced by the command.
    pub process: ProcessSpec,
    /// Standard input is a terminal: the process gets it as its controlling terminal.
    pub tty: bool,
    /// Where a failure to start (not the command's own failure) is written.
    pub error_file: PathBuf,
}
