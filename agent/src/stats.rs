//! Resource usage as kubelet reports it (its Summary API, `/metrics/resource`), read where the
//! kernel keeps it: cgroups (v1 and v2) for pods and containers, `/proc` for the node, a pod's
//! own `/proc/<pid>/net/dev` for its network, `statvfs` and a walk for filesystems.
//!
//! CPU is a counter; its rate (`usageNanoCores`) needs an earlier reading, which `Sampler`
//! keeps: it reads every pod's and container's CPU counter every `PERIOD` (cadvisor's
//! housekeeping does the same), and a rate is the change since the newest reading at least a
//! second old.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodelet_sandbox::cgroup::{self, Hierarchy};

pub const PERIOD: Duration = Duration::from_secs(10);

/// Memory as kubelet reports it; the working set is usage less inactive file pages (what the
/// kernel would reclaim first), cadvisor's and the eviction manager's measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

/// Reads a cgroup's cumulative CPU time in nanoseconds.
pub fn cgroup_cpu(hierarchy: Hierarchy, path: &Path) -> Option<u64> {
    match hierarchy {
        Hierarchy::V1 => {
            let dir = cgroup::controller_dir(hierarchy, "cpuacct", path);
            read(&dir.join("cpuacct.usage"))?.trim().parse().ok()
        }
        Hierarchy::V2 => {
            let dir = cgroup::controller_dir(hierarchy, "cpu", path);
            let text = read(&dir.join("cpu.stat"))?;
            field(&text, "usage_usec").map(|us| us * 1_000)
        }
    }
}

pub fn cgroup_memory(hierarchy: Hierarchy, path: &Path) -> Option<Memory> {
    let dir = cgroup::controller_dir(hierarchy, "memory", path);
    let (usage_file, inactive, rss, faults, major) = match hierarchy {
        Hierarchy::V1 => (
            "memory.usage_in_bytes",
            "total_inactive_file",
            "total_rss",
            "total_pgfault",
            "total_pgmajfault",
        ),
        Hierarchy::V2 => (
            "memory.current",
            "inactive_file",
            "anon",
            "pgfault",
            "pgmajfault",
        ),
    };
    let usage: u64 = read(&dir.join(usage_file))?.trim().parse().ok()?;
    let stat = read(&dir.join("memory.stat")).unwrap_or_default();
    let inactive = field(&stat, inactive).unwrap_or(0);
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(inactive),
        rss: field(&stat, rss).unwrap_or(0),
        page_faults: field(&stat, faults).unwrap_or(0),
        major_page_faults: field(&stat, major).unwrap_or(0),
    })
}

/// The processes in a cgroup (one controller's `cgroup.procs` on v1: they all hold the same).
pub fn cgroup_pids(hierarchy: Hierarchy, path: &Path) -> Vec<i32> {
    let dir = cgroup::controller_dir(hierarchy, "memory", path);
    read(&dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The node's CPU time in nanoseconds (busy time of every CPU, from `/proc/stat`).
pub fn node_cpu() -> Option<u64> {
    parse_proc_stat_busy(&read(Path::new("/proc/stat"))?)
}

fn parse_proc_stat_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy * (1_000_000_000 / hz))
}

/// The node's memory, from `/proc/meminfo` (as cadvisor reads the root on cgroup v2), and its
/// capacity.
pub fn node_memory() -> Option<(Memory, u64)> {
    parse_meminfo(&read(Path::new("/proc/meminfo"))?)
}

fn parse_meminfo(text: &str) -> Option<(Memory, u64)> {
    let kib = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let total = kib("MemTotal")?;
    let usage = total.saturating_sub(kib("MemFree")?);
    let memory = Memory {
        usage,
        working_set: usage.saturating_sub(kib("Inactive(file)").unwrap_or(0)),
        rss: kib("AnonPages").unwrap_or(0),
        ..Memory::default()
    };
    Some((memory, total))
}

/// When the machine booted (`btime` in `/proc/stat`): the node's start time in its stats.
pub fn boot_time() -> Option<jiff::Timestamp> {
    let text = read(Path::new("/proc/stat"))?;
    let secs = field(&text, "btime")?;
    jiff::Timestamp::from_second(secs as i64).ok()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of the network namespace `pid` is in, but loopback.
pub fn interfaces(pid: i32) -> Vec<Interface> {
    read(Path::new(&format!("/proc/{pid}/net/dev")))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; then tx the same.
            (n.len() >= 16 && name.trim() != "lo").then(|| Interface {
                name: name.trim().to_owned(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// A filesystem's size and free space (of the filesystem `path` is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filesystem {
    pub capacity: u64,
    pub available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn filesystem(path: &Path) -> Option<Filesystem> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    Some(Filesystem {
        capacity: s.blocks() as u64 * frag,
        available: s.blocks_available() as u64 * frag,
        inodes: s.files() as u64,
        inodes_free: s.files_free() as u64,
    })
}

/// Bytes (allocated blocks) and inodes below `path`, on its filesystem only, not following
/// links: what `du` says, and what kubelet reports as a container's rootfs and log use.
pub fn disk_usage(path: &Path) -> (u64, u64) {
    let Ok(top) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    let device = top.dev();
    let (mut bytes, mut inodes) = (top.blocks() * 512, 1);
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// How long a directory walk's result is used again: cadvisor measures disk use about once a
/// minute too (a walk reads every inode; usage changes slowly).
const DISK_USAGE_TTL: Duration = Duration::from_secs(60);

/// A walk's result: when it was measured, and (bytes, inodes).
type Measured = (Instant, (u64, u64));

/// Walk results, by directory.
#[derive(Default)]
pub struct DiskUsage {
    seen: Mutex<HashMap<PathBuf, Measured>>,
}

impl DiskUsage {
    /// `disk_usage(path)`, measured again when its last measure is older than a minute.
    pub fn of(&self, path: &Path) -> (u64, u64) {
        let now = Instant::now();
        if let Some((at, usage)) = self.seen.lock().expect("disk usage lock").get(path) {
            if now.duration_since(*at) < DISK_USAGE_TTL {
                return *usage;
            }
        }
        let usage = disk_usage(path);
        let mut seen = self.seen.lock().expect("disk usage lock");
        // Directories of pods that left are forgotten as their measures age out.
        seen.retain(|_, (at, _)| now.duration_since(*at) < DISK_USAGE_TTL);
        seen.insert(path.to_path_buf(), (now, usage));
        usage
    }
}

/// CPU counter readings (when, nanoseconds), the last two.
type Readings = VecDeque<(Instant, u64)>;

/// CPU readings kept for rates, per cgroup (and the node's under `None`), and the node's
/// usage over the last hour.
#[derive(Default)]
pub struct Sampler {
    readings: Mutex<HashMap<Option<PathBuf>, Readings>>,
    history: Mutex<VecDeque<Usage>>,
}

/// The node's usage at one sample: what the dashboard draws.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Unix seconds.
    pub time: i64,
    pub nano_cores: u64,
    pub memory_working_set_bytes: u64,
}

/// Samples kept: an hour of them at the sampler's 10 s.
const HISTORY: usize = 360;

/// A CPU counter now and its rate over the window it was measured on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cpu {
    pub total_nanos: u64,
    pub nano_cores: Option<u64>,
    pub window: Duration,
}

impl Sampler {
    /// Records the CPU counters of these cgroups and the node, and forgets cgroups not among
    /// them (pods that left).
    pub fn sample(&self, hierarchy: Hierarchy, cgroups: &[PathBuf]) {
        let now = Instant::now();
        let mut fresh: HashMap<Option<PathBuf>, u64> = cgroups
            .iter()
            .filter_map(|p| Some((Some(p.clone()), cgroup_cpu(hierarchy, p)?)))
            .collect();
        if let Some(n) = node_cpu() {
            fresh.insert(None, n);
        }
        let node_now = fresh.get(&None).copied();
        let mut readings = self.readings.lock().expect("stats lock");
        let node_before = readings.get(&None).and_then(|r| r.back()).copied();
        readings.retain(|k, _| fresh.contains_key(k));
        for (key, value) in fresh {
            let kept = readings.entry(key).or_default();
            kept.push_back((now, value));
            while kept.len() > 2 {
                kept.pop_front();
            }
        }
        drop(readings);
        if let (Some((at, before)), Some(value)) = (node_before, node_now) {
            let seconds = now.duration_since(at).as_secs_f64();
            let memory = node_memory().map_or(0, |(m, _)| m.working_set);
            let mut history = self.history.lock().expect("stats lock");
            history.push_back(Usage {
                time: jiff::Timestamp::now().as_second(),
                nano_cores: (value.saturating_sub(before) as f64 / seconds.max(1e-3)) as u64,
                memory_working_set_bytes: memory,
            });
            while history.len() > HISTORY {
                history.pop_front();
            }
        }
    }

    /// The node's usage at each sample of the last hour, oldest first.
    pub fn history(&self) -> Vec<Usage> {
        self.history
            .lock()
            .expect("stats lock")
            .iter()
            .copied()
            .collect()
    }

    /// The counter read now, with its rate since the newest recorded reading at least a second
    /// old (none before there is one).
    pub fn cpu(&self, cgroup: Option<&Path>, total_nanos: u64) -> Cpu {
        let now = Instant::now();
        let readings = self.readings.lock().expect("stats lock");
        let base = readings
            .get(&cgroup.map(Path::to_path_buf))
            .and_then(|r| {
                r.iter()
                    .rev()
                    .find(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
            })
            .copied();
        match base {
            Some((at, value)) if total_nanos >= value => {
                let window = now.duration_since(at);
                let rate = (total_nanos - value) as f64 / window.as_secs_f64();
                Cpu {
                    total_nanos,
                    nano_cores: Some(rate as u64),
                    window,
                }
            }
            _ => Cpu {
                total_nanos,
                nano_cores: None,
                window: Duration::ZERO,
            },
        }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `key value` in a flat-keyed file (`memory.stat`, `cpu.stat`, `/proc/stat`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 10 2 3 4 0 0\ncpu0 1 2 3 4\nbtime 1700000000\n";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            parse_proc_stat_busy(stat),
            Some((100 + 5 + 50 + 2 + 3 + 4) * (1_000_000_000 / hz))
        );
        assert_eq!(field(stat, "btime"), Some(1_700_000_000));

        let meminfo = "MemTotal:       1000 kB\nMemFree:         200 kB\n\
                       MemAvailable:    600 kB\nInactive(file):  300 kB\nAnonPages:  100 kB\n";
        let (m, total) = parse_meminfo(meminfo).unwrap();
        assert_eq!(total, 1000 * 1024);
        assert_eq!(
            (m.usage, m.working_set, m.rss),
            (800 * 1024, 500 * 1024, 100 * 1024)
        );

        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n  eth0: 1500 10 1 0 0 0 0 0 900 8 2 0 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(dev),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 1500,
                rx_errors: 1,
                tx_bytes: 900,
                tx_errors: 2
            }]
        );
    }

    #[test]
    fn a_rate_needs_a_reading_a_second_old() {
        let s = Sampler::default();
        assert_eq!(s.cpu(None, 5).nano_cores, None);
        let key = PathBuf::from("k");
        let past = Instant::now() - Duration::from_secs(2);
        s.readings
            .lock()
            .unwrap()
            .insert(Some(key.clone()), VecDeque::from([(past, 1_000_000_000)]));
        let cpu = s.cpu(Some(&key), 2_000_000_000);
        let rate = cpu.nano_cores.unwrap();
        // One second of CPU over about two seconds: half a core.
        assert!((480_000_000..=500_000_000).contains(&rate), "{rate}");
        assert!(cpu.window >= Duration::from_secs(2));
    }

    #[test]
    fn disk_usage_counts_blocks_and_inodes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), vec![1u8; 64 * 1024]).unwrap();
        let (bytes, inodes) = disk_usage(tmp.path());
        assert_eq!(inodes, 3);
        assert!(bytes >= 64 * 1024, "{bytes}");
    }
}
