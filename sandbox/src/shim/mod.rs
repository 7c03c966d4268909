//! The pod shim: one small, single-threaded monitor process per pod (DESIGN.md decision 2).
//!
//! ```text
//! agent ──exec──▶ nodelet shim DIR ──fork──▶ shim (setsid, subreaper)
//!                   │ waits for "ok"          │ unshare net/uts/ipc, pin them, pod /dev/shm
//!                   ▼ exits 0 / 1             │ [shared PID: unshare pid, fork pod init]
//!                                             │ listen on DIR/shim.sock ──"ok"──▶
//!                                             ▼ serve: create/signal/state/remove/shutdown
//!                                               reap children, write CRI logs, record exits
//! ```
//!
//! The shim is not a child of the agent and does not share its session, so the agent can stop or
//! crash without touching the pod. Every container record is written to `DIR/containers/` as it
//! changes, so exits are known even across a shim crash.

mod container;
mod log;
mod server;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::Pid;

use crate::spec::SandboxSpec;
use crate::sys::{self, Forked};
use crate::{cgroup, mount, ns};

pub use log::LineLogger;
pub use server::{reap_forever, reap_until_terminated};

/// The files of one pod's shim under the run directory.
#[derive(Clone, Debug)]
pub struct ShimDir(PathBuf);

impl ShimDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ShimDir(dir.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("shim.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("shim.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    /// The pod's pinned network namespace, `ns/net`, which CNI and the agent use by path. The
    /// others live as long as the shim, which is in them or holds them open: every mount the
    /// node has is copied into each new container's mount namespace, so a pod keeps as few in
    /// the node's table as it can (shims of older releases also pinned `uts`, `ipc`, `pid`,
    /// `user`; those are released all the same).
    pub fn ns_dir(&self) -> PathBuf {
        self.0.join("ns")
    }
    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }
    pub fn records(&self) -> PathBuf {
        self.0.join("containers")
    }

    /// Releases what a shim leaves in the mount table (pins, /dev/shm) when it could not: after
    /// a crash or a SIGKILL. Idempotent; collects every error.
    pub fn release_mounts(&self) -> Vec<mount::Error> {
        let mut errors = ns::unpin_all(&self.ns_dir());
        if let Err(e) = mount::unmount(&self.shm()) {
            errors.push(e);
        }
        errors
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read shim config {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse shim config {path}")]
    ConfigFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("prepare shim directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fork shim")]
    Fork(#[source] std::io::Error),
    #[error(transparent)]
    Namespace(#[from] ns::Error),
    #[error(transparent)]
    Mount(#[from] mount::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error("create shared PID namespace")]
    PidNamespace(#[source] nix::Error),
    #[error("listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("set up signals")]
    Signals(#[source] nix::Error),
}

/// `nodelet shim DIR`: starts the pod's shim and returns once it serves, or with its error.
/// The exit code of this (short-lived) process is the agent's answer.
pub fn main(dir: &Path) -> i32 {
    let (ready_r, ready_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shim: create pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("shim: {}", Error::Fork(e));
            1
        }
        Ok(Forked::Parent(_)) => {
            drop(ready_w);
            let mut line = String::new();
            let _ = BufReader::new(fs::File::from(ready_r)).read_line(&mut line);
            if line == "ok\n" {
                0
            } else {
                eprintln!(
                    "shim: {}",
                    if line.is_empty() {
                        "exited during start"
                    } else {
                        line.trim_end()
                    }
                );
                1
            }
        }
        Ok(Forked::Child) => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            run_daemon(ShimDir::new(dir), ready_w)
        }
    }
}

fn run_daemon(dir: ShimDir, ready: OwnedFd) -> ! {
    let mut ready = fs::File::from(ready);
    match start(&dir) {
        Ok(mut server) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            sys::release_free_memory();
            server.serve();
            sys::exit_now(0)
        }
        Err(e) => {
            let text = error_chain(&e);
            tracing::error!(error = %text, "shim start failed");
            let _ = ready.write_all(format!("{text}\n").as_bytes());
            dir.release_mounts();
            sys::exit_now(1)
        }
    }
}

/// Formats an error with its whole source chain: "a: b: c".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn start(dir: &ShimDir) -> Result<server::Server, Error> {
    let config_path = dir.config();
    let text = fs::read(&config_path).map_err(|source| Error::Config {
        path: config_path.clone(),
        source,
    })?;
    let spec: SandboxSpec =
        serde_json::from_slice(&text).map_err(|source| Error::ConfigFormat {
            path: config_path,
            source,
        })?;
    let dir_err = |path: PathBuf| move |source| Error::Dir { path, source };
    redirect_stdio(&dir.log()).map_err(dir_err(dir.log()))?;
    // Orphaned container processes are re-parented here, so their exits are reaped here.
    nix::sys::prctl::set_child_subreaper(true).map_err(Error::Signals)?;
    fs::write(dir.pid_file(), std::process::id().to_string()).map_err(dir_err(dir.pid_file()))?;
    fs::create_dir_all(dir.records()).map_err(dir_err(dir.records()))?;
    fs::create_dir_all(dir.ns_dir()).map_err(dir_err(dir.ns_dir()))?;

    let userns = match &spec.user_namespace {
        Some(map) => {
            let userns = ns::create_owned_pod_namespaces(map)?;
            ns::name_and_loopback(&spec.hostname)?;
            Some(userns)
        }
        None => {
            ns::create_pod_namespaces(&spec.hostname, spec.host_network, spec.host_ipc)?;
            None
        }
    };
    ns::set_sysctls(&spec.sysctls)?;
    ns::pin(&dir.ns_dir(), "self", "net", "net")?;
    mount::ensure_mount_point(&dir.shm(), true)?;
    mount::mount_fs(
        "tmpfs",
        &dir.shm(),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=67108864"),
    )?;
    if let Some(cg) = &spec.cgroup {
        cgroup::create(cg)?;
    }
    let pod_init = if spec.share_pid {
        Some(start_pod_init(&spec)?)
    } else {
        None
    };

    let socket = dir.socket();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| Error::Listen {
        path: socket,
        source,
    })?;
    tracing::info!(pod_uid = %spec.pod_uid, hostname = %spec.hostname, "shim serving");
    server::Server::new(dir.clone(), spec, listener, pod_init, userns)
}

/// For `shareProcessNamespace`: every later child of the shim lands in one new PID namespace,
/// whose init is a small reaper (what the pause container is on other runtimes).
fn start_pod_init(spec: &SandboxSpec) -> Result<Pid, Error> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(Error::PidNamespace)?;
    match sys::fork().map_err(Error::Fork)? {
        Forked::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            reap_forever()
        }
        Forked::Parent(pid) => {
            if let Some(cg) = &spec.cgroup {
                cgroup::add_process(&cg.path, pid)?;
            }
            Ok(pid)
        }
    }
}

fn redirect_stdio(log: &Path) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let null = fs::File::open("/dev/null")?;
    sys::dup_onto(null.as_fd(), 0)?;
    sys::dup_onto(file.as_fd(), 1)?;
    sys::dup_onto(file.as_fd(), 2)?;
    Ok(())
}
