//! Cgroups for pods and containers: v2 (unified) where the machine has it, v1 controllers otherwise.
//!
//! Paths are relative to the hierarchy root (`/sys/fs/cgroup` on v2, `/sys/fs/cgroup/<controller>`
//! on v1). Numbers follow kubelet (`MilliCPUToShares`, `MilliCPUToQuota`) and runc's conversions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers nodelet manages; each gets the same relative path.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("device rules of cgroup {path}")]
    Devices {
        path: PathBuf,
        #[source]
        source: crate::devices::Error,
    },
    #[error("remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A cgroup and the limits to put on it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CgroupSpec {
    /// Relative to the hierarchy root, e.g. `nodelet/kubepods/burstable/pod<uid>/<container id>`.
    pub path: PathBuf,
    pub memory_limit: Option<u64>,
    /// CFS quota per `CPU_PERIOD_US`, from `limits.cpu`.
    pub cpu_quota_us: Option<u64>,
    /// cgroup v1 `cpu.shares`, from `requests.cpu`.
    pub cpu_shares: Option<u64>,
    /// cgroup v2 `cpu.weight`: `shares_to_weight(cpu_shares)`, computed by the agent. (The shim
    /// does no floating point: that keeps libm out of it, and ~0.4 MiB out of every pod's RSS.)
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    /// `pids.max`: processes and threads at once (kubelet's `podPidsLimit`, on the pod).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// The devices the cgroup's processes may open or make (containers: runc's defaults); `None`
    /// leaves the parent's.
    #[serde(default)]
    pub devices: Option<Vec<crate::devices::DeviceRule>>,
}

/// Which cgroup layout the machine offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    V2,
    V1,
}

impl Hierarchy {
    pub fn detect() -> Hierarchy {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            Hierarchy::V2
        } else {
            Hierarchy::V1
        }
    }

    /// The directories one relative cgroup path stands for.
    fn dirs(self, path: &Path) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        match self {
            Hierarchy::V2 => vec![root.join(path)],
            Hierarchy::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c))
                .filter(|c| c.is_dir())
                .map(|c| c.join(path))
                .collect(),
        }
    }
}

/// kubelet's `MilliCPUToShares`.
pub fn millicpu_to_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).clamp(2, 262_144)
}

/// kubelet's `MilliCPUToQuota` for the default 100 ms period.
pub fn millicpu_to_quota(millis: u64) -> u64 {
    (millis * CPU_PERIOD_US / 1000).max(1000)
}

/// runc's `ConvertCPUSharesToCgroupV2Value` (runc 1.3.2+).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

fn write(path: PathBuf, value: &str) -> Result<(), Error> {
    fs::write(&path, value).map_err(|source| Error::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

fn write_if_exists(path: PathBuf, value: &str) -> Result<(), Error> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// Creates the cgroup (and its parents) and applies its limits.
pub fn create(spec: &CgroupSpec) -> Result<(), Error> {
    let hierarchy = Hierarchy::detect();
    if hierarchy == Hierarchy::V2 {
        enable_v2_controllers(Path::new(CGROUP_ROOT), &spec.path)?;
    }
    for dir in hierarchy.dirs(&spec.path) {
        fs::create_dir_all(&dir).map_err(|source| Error::Create {
            path: dir.clone(),
            source,
        })?;
        match hierarchy {
            Hierarchy::V1 => apply_v1(&dir, spec)?,
            Hierarchy::V2 => apply_v2(&dir, spec)?,
        }
    }
    // Before any process joins: a container never runs a moment with the host's devices.
    if let Some(rules) = &spec.devices {
        crate::devices::apply(hierarchy, &spec.path, rules).map_err(|source| Error::Devices {
            path: spec.path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn apply_v1(dir: &Path, spec: &CgroupSpec) -> Result<(), Error> {
    if let Some(limit) = spec.memory_limit {
        write_if_exists(dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        // No swap for a limited container, as containerd does when no swap limit is given.
        write_if_exists(dir.join("memory.memsw.limit_in_bytes"), &limit.to_string())?;
    }
    if let Some(quota) = spec.cpu_quota_us {
        write_if_exists(dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write_if_exists(dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if let Some(shares) = spec.cpu_shares {
        write_if_exists(dir.join("cpu.shares"), &shares.to_string())?;
    }
    if let Some(pids) = spec.pids_limit {
        write_if_exists(dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

fn apply_v2(dir: &Path, spec: &CgroupSpec) -> Result<(), Error> {
    if let Some(limit) = spec.memory_limit {
        write_if_exists(dir.join("memory.max"), &limit.to_string())?;
        write_if_exists(dir.join("memory.swap.max"), "0")?;
    }
    if let Some(quota) = spec.cpu_quota_us {
        write_if_exists(dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    if let Some(weight) = spec.cpu_weight {
        write_if_exists(dir.join("cpu.weight"), &weight.to_string())?;
    }
    if let Some(pids) = spec.pids_limit {
        write_if_exists(dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// On v2 a controller is usable in a cgroup only when every ancestor, its parent included,
/// delegates it (`+memory` in the ancestor's `cgroup.subtree_control`): each cgroup on the way
/// down to `path` (under `root`) is made and enables the controllers it has for its children.
fn enable_v2_controllers(root: &Path, path: &Path) -> Result<(), Error> {
    let mut dir = root.to_owned();
    for component in path.components() {
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = ["memory", "cpu", "pids"]
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            write(dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
        dir.push(component);
        fs::create_dir_all(&dir).map_err(|source| Error::Create {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Moves a process into the cgroup.
pub fn add_process(path: &Path, pid: Pid) -> Result<(), Error> {
    for dir in Hierarchy::detect().dirs(path) {
        write(dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// The directory of a cgroup for one controller's files: on v2 the cgroup's one directory, on
/// v1 the controller's (`memory`, `cpuacct`, ...).
pub fn controller_dir(hierarchy: Hierarchy, controller: &str, path: &Path) -> PathBuf {
    match hierarchy {
        Hierarchy::V2 => Path::new(CGROUP_ROOT).join(path),
        Hierarchy::V1 => Path::new(CGROUP_ROOT).join(controller).join(path),
    }
}

/// How many times the kernel's OOM killer killed a process of this cgroup.
pub fn oom_kills(path: &Path) -> u64 {
    let hierarchy = Hierarchy::detect();
    let file = match hierarchy {
        Hierarchy::V2 => "memory.events",
        Hierarchy::V1 => "memory.oom_control",
    };
    let dir = controller_dir(hierarchy, "memory", path);
    let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Process ids in the cgroup (any of its directories).
pub fn processes(path: &Path) -> Vec<Pid> {
    let mut pids: Vec<Pid> = Hierarchy::detect()
        .dirs(path)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .map(Pid::from_raw)
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

/// SIGKILLs what is left in the cgroup and removes it and every cgroup below it, leaves first.
/// Missing cgroups are fine: removal is idempotent.
pub fn remove(path: &Path) -> Result<(), Error> {
    for dir in Hierarchy::detect().dirs(path) {
        remove_tree(&dir)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<(), Error> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // rmdir fails with EBUSY while a process (even a zombie being reaped) is still in it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_controllers_are_delegated_down_to_the_parent() {
        let root = tempfile::tempdir().unwrap();
        let path = Path::new("kubepods/pod1/c1");
        // What the kernel shows: each cgroup offers what its parent delegates.
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        for dir in ["kubepods", "kubepods/pod1"] {
            fs::create_dir_all(root.path().join(dir)).unwrap();
            fs::write(
                root.path().join(dir).join("cgroup.controllers"),
                "cpu memory pids",
            )
            .unwrap();
        }
        enable_v2_controllers(root.path(), path).unwrap();
        for dir in ["", "kubepods", "kubepods/pod1"] {
            let written = fs::read_to_string(root.path().join(dir).join("cgroup.subtree_control"));
            assert_eq!(written.unwrap(), "+memory +cpu +pids", "{dir:?}");
        }
        assert!(root.path().join(path).is_dir());
        assert!(!root
            .path()
            .join(path)
            .join("cgroup.subtree_control")
            .exists());
    }

    #[test]
    fn kubelet_cpu_numbers() {
        assert_eq!(millicpu_to_shares(0), 2);
        assert_eq!(millicpu_to_shares(100), 102);
        assert_eq!(millicpu_to_shares(1000), 1024);
        assert_eq!(millicpu_to_quota(250), 25_000);
        assert_eq!(millicpu_to_quota(1), 1000);
    }

    #[test]
    fn runc_weight_conversion() {
        // The examples of runtime-defaults.md §6.
        for (shares, weight) in [
            (2, 1),
            (102, 17),
            (256, 35),
            (512, 59),
            (1024, 100),
            (2048, 174),
            (4096, 303),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "shares {shares}");
        }
    }
}
