//! The integration test harness: throwaway test nodes (DESIGN.md, "Testing without hurting the
//! host"), the locally built test images, and checks that nothing is left behind.
//!
//! A test node is a new mount, network and PID namespace whose pid 1 is `nodelet-shim reaper`, with its
//! own root, run, log and manifest directories under a temporary directory and its own cgroup
//! root. The agent runs inside it (through nsenter). Everything the agent mounts stays in the
//! node's mount namespace and every process dies with the node's pid 1, so even a failing test
//! cannot leave mounts, links or processes on the host; `assert_clean` checks that nodelet itself
//! cleaned up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub mod browser;
mod cni;
mod node;
mod registry;
pub mod scale;
mod token;

pub use cni::{run_cni, NetnsHolder};
pub use node::{describe_output, kubectl_path, Agent, TestNode};
pub use registry::Registry;

/// The workspace's directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The `nodelet` binary under test: `$NODELET_BIN`, else the workspace's debug build.
pub fn nodelet_bin() -> PathBuf {
    let path = std::env::var_os("NODELET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/nodelet"));
    assert!(
        path.is_file(),
        "{} missing: build it first (cargo build -p nodelet; make test does)",
        path.display()
    );
    // Absolute: nsenter runs it from inside the node's mount namespace.
    path.canonicalize().expect("canonical nodelet path")
}

/// `nodelet-shim`, beside the agent; pid 1 of every test node is `nodelet-shim reaper`.
pub fn shim_bin() -> PathBuf {
    nodelet_bin().with_file_name("nodelet-shim")
}

/// An exclusive lock on `target/<name>.lock`, held while a build shared by test binaries
/// running side by side is checked or made.
fn build_lock(name: &str) -> nix::fcntl::Flock<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(workspace().join(format!("target/{name}.lock")))
        .expect("open a build lock");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock target/{name}.lock: {e}"))
}

/// The dashboard's terminal files where a debug or release agent finds them
/// (`target/dashboard`), installed from npm by `dashboard/install.sh` when missing (under a
/// lock: test binaries run side by side).
pub fn dashboard_assets() -> PathBuf {
    let out = workspace().join("target/dashboard");
    let _guard = build_lock("dashboard");
    if !out.join("xterm.js").is_file() {
        let status = Command::new("bash")
            .arg(workspace().join("dashboard/install.sh"))
            .arg(&out)
            .status()
            .expect("run dashboard/install.sh");
        assert!(status.success(), "dashboard/install.sh failed");
    }
    out
}

/// Builds the busybox, kubia and multiarch images once per checkout (tests/images/build.sh), under a lock
/// so test binaries running side by side share one build.
pub fn test_images() -> PathBuf {
    let out = workspace().join("target/test-images");
    let _guard = build_lock("test-images");
    // Built again whenever build.sh changed since (its hash is kept beside the images).
    let script = workspace().join("tests/images/build.sh");
    // The gRPC health server of the probe tests, built with this package's binaries.
    let grpc = nodelet_bin().with_file_name("grpc-health");
    let mut inputs = fs::read(&script).expect("read build.sh");
    inputs.extend(fs::read(&grpc).unwrap_or_default());
    let hash = hex(&openssl::sha::sha256(&inputs));
    let stamp = out.join(".build.sh.sha256");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(hash.as_str()) {
        let mut build = Command::new("bash");
        if grpc.is_file() {
            build.env("GRPC_HEALTH", &grpc);
        }
        let status = build
            .arg(&script)
            .arg(&out)
            .status()
            .expect("run tests/images/build.sh");
        assert!(status.success(), "building test images failed");
        fs::write(&stamp, &hash).expect("write test image stamp");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-container busybox pod that sleeps, with a 1 s grace period.
pub fn sleeper_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n"
    )
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's pod shims (the pod init of a shared-PID pod is a shim's child, not counted).
pub fn shim_pids(node: &TestNode) -> Vec<i32> {
    node.processes()
        .into_iter()
        .filter(|p| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                return false;
            };
            let parent = std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .and_then(|v| v.trim().parse::<i32>().ok())
                });
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            argv.first().is_some_and(|a| a.ends_with(b"nodelet-shim"))
                && argv.get(1) != Some(&&b"reaper"[..])
                && parent == Some(node.reaper)
        })
        .collect()
}

/// RSS and PSS (KiB, from smaps_rollup) of every shim of the node.
pub fn shim_memory_kib(node: &TestNode) -> Vec<(u64, u64)> {
    shim_pids(node)
        .into_iter()
        .filter_map(|p| {
            let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            Some((kib(&rollup, "Rss:")?, kib(&rollup, "Pss:")?))
        })
        .collect()
}

/// A `Name:   123 kB` field of a /proc file (status, smaps_rollup), in KiB.
pub fn kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
}
