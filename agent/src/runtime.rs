//! The agent's side of the shim: starting a pod's shim, talking to it, and tearing a pod down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodelet_sandbox::protocol::{ContainerStatus, Request, Response};
use nodelet_sandbox::shim::ShimDir;
use nodelet_sandbox::spec::{ContainerSpec, SandboxSpec};
use nodelet_sandbox::{cgroup, mount};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;

use crate::paths::NodePaths;

/// How long one shim call may take; creating a container is the slowest (mounts, exec).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write shim config {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run shim for pod {uid}")]
    Spawn {
        uid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("start shim for pod {uid}: {message}")]
    Start { uid: String, message: String },
    #[error("call shim of pod {uid}")]
    Call {
        uid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shim of pod {uid} did not answer in time")]
    Timeout { uid: String },
    #[error("shim of pod {uid}: {message}")]
    Shim { uid: String, message: String },
    #[error("shim of pod {uid} answered {got} to {request}")]
    Unexpected {
        uid: String,
        request: &'static str,
        got: String,
    },
}

pub type ShimEvents = Lines<BufReader<UnixStream>>;

/// A pod's namespace and name: where its logs are (`NodePaths::pod_logs`) and what its log
/// links are called.
#[derive(Clone, Copy, Debug)]
pub struct PodName<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// What a teardown releases.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// The sandbox only: the pod's volumes, records and logs stay for the next sandbox, as
    /// kubelet keeps them when it recreates a pod's sandbox.
    Sandbox,
    /// The whole pod; with its namespace and name, its logs and their links too.
    Pod { logs: Option<PodName<'a>> },
}

#[derive(Clone, Debug)]
pub struct Runtime {
    paths: NodePaths,
    shim_binary: PathBuf,
}

/// `nodelet-shim`, installed beside `nodelet`.
pub fn shim_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/nodelet"));
    exe.with_file_name("nodelet-shim")
}

impl Runtime {
    pub fn new(paths: NodePaths) -> Self {
        Runtime {
            paths,
            shim_binary: shim_binary(),
        }
    }

    pub fn shim(&self, uid: &str) -> ShimDir {
        self.paths.shim(uid)
    }

    /// Starts the pod's shim (re-executing this binary) and returns once it serves.
    pub async fn start_sandbox(&self, spec: &SandboxSpec) -> Result<(), Error> {
        let dir = self.shim(&spec.pod_uid);
        let config = dir.config();
        let write = async {
            tokio::fs::create_dir_all(dir.path()).await?;
            tokio::fs::write(&config, serde_json::to_vec(spec)?).await
        };
        write.await.map_err(|source| Error::Config {
            path: config.clone(),
            source,
        })?;
        let output = tokio::process::Command::new(&self.shim_binary)
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                uid: spec.pod_uid.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            let message = String::from_utf8_lossy(&output.stderr)
                .trim()
                .trim_start_matches("shim: ")
                .to_owned();
            Err(Error::Start {
                uid: spec.pod_uid.clone(),
                message,
            })
        }
    }

    /// Every container instance the shim knows, running or exited.
    pub async fn state(&self, uid: &str) -> Result<Vec<ContainerStatus>, Error> {
        match self.call(uid, &Request::State).await? {
            Response::State { containers, .. } => Ok(containers),
            other => Err(unexpected(uid, "state", &other)),
        }
    }

    /// Creates and starts one container instance; its first process's pid.
    pub async fn create(&self, uid: &str, spec: ContainerSpec) -> Result<i32, Error> {
        let request = Request::Create {
            spec: Box::new(spec),
        };
        match self.call(uid, &request).await? {
            Response::Created { pid } => Ok(pid),
            other => Err(unexpected(uid, "create", &other)),
        }
    }

    /// Sends `signal` to a running instance's first process.
    pub async fn signal(&self, uid: &str, id: &str, signal: i32) -> Result<(), Error> {
        let request = Request::Signal {
            id: id.to_owned(),
            signal,
        };
        self.done(uid, "signal", &request).await
    }

    /// Closes the shim's end of an instance's stdin (its process reads EOF once attach sessions
    /// close theirs).
    pub async fn close_stdin(&self, uid: &str, id: &str) -> Result<(), Error> {
        let request = Request::CloseStdin { id: id.to_owned() };
        self.done(uid, "close stdin", &request).await
    }

    /// The controlling side of a `tty: true` instance's terminal, which the shim sends with its
    /// answer (SCM_RIGHTS).
    pub async fn terminal(&self, uid: &str, id: &str) -> Result<std::os::fd::OwnedFd, Error> {
        let socket = self.shim(uid).socket();
        let request = Request::Terminal { id: id.to_owned() };
        let owner = uid.to_owned();
        let exchange = move || -> std::io::Result<(Response, Option<std::os::fd::OwnedFd>)> {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
            stream.set_read_timeout(Some(CALL_TIMEOUT))?;
            nodelet_sandbox::protocol::write_message(&mut stream, &request)?;
            let mut reply = Vec::new();
            let mut terminal = None;
            let mut buf = [0u8; 4096];
            while !reply.ends_with(b"\n") {
                let (n, fd) = nodelet_sandbox::sys::recv_with_fd(
                    std::os::fd::AsFd::as_fd(&stream),
                    &mut buf,
                )?;
                if n == 0 {
                    break;
                }
                terminal = terminal.or(fd);
                reply.extend_from_slice(&buf[..n]);
            }
            let response = serde_json::from_slice(&reply).map_err(std::io::Error::from)?;
            Ok((response, terminal))
        };
        let (response, terminal) = tokio::task::spawn_blocking(exchange)
            .await
            .map_err(|e| Error::Shim {
                uid: owner.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| Error::Call {
                uid: owner.clone(),
                source,
            })?;
        match (response, terminal) {
            (Response::Done, Some(fd)) => Ok(fd),
            (Response::Error { message }, _) => Err(Error::Shim {
                uid: owner,
                message,
            }),
            (other, _) => Err(unexpected(uid, "terminal", &other)),
        }
    }

    /// Forgets an exited instance.
    pub async fn remove(&self, uid: &str, id: &str) -> Result<(), Error> {
        let request = Request::Remove { id: id.to_owned() };
        self.done(uid, "remove", &request).await
    }

    /// Kills what is left of the pod, releases its namespaces, and ends the shim.
    pub async fn shutdown(&self, uid: &str) -> Result<(), Error> {
        self.done(uid, "shutdown", &Request::Shutdown).await
    }

    async fn done(&self, uid: &str, name: &'static str, request: &Request) -> Result<(), Error> {
        match self.call(uid, request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(uid, name, &other)),
        }
    }

    /// Runs a command in a running container through its shim (probes and hooks): its exit
    /// status and output, or `None` for the status when `timeout` passed first.
    pub async fn exec(
        &self,
        uid: &str,
        spec: nodelet_sandbox::spec::ExecSpec,
        timeout: Option<Duration>,
    ) -> Result<(Option<i32>, String), Error> {
        let request = Request::Exec {
            spec: Box::new(spec),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        };
        // The shim ends the command at its timeout; the answer gets a margin beyond it.
        let wait = timeout.map(|t| t + CALL_TIMEOUT);
        match self.call_within(uid, &request, wait).await? {
            Response::Ran {
                code,
                output,
                timed_out,
            } => Ok(((!timed_out).then_some(code), output)),
            other => Err(unexpected(uid, "exec", &other)),
        }
    }

    /// One request, one response.
    async fn call(&self, uid: &str, request: &Request) -> Result<Response, Error> {
        self.call_within(uid, request, Some(CALL_TIMEOUT)).await
    }

    /// One request, one response, waiting at most `wait` (forever with `None`).
    async fn call_within(
        &self,
        uid: &str,
        request: &Request,
        wait: Option<Duration>,
    ) -> Result<Response, Error> {
        let socket = self.shim(uid).socket();
        let call_err = |source| Error::Call {
            uid: uid.to_owned(),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&socket).await?;
            let mut line = serde_json::to_vec(request)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).await?;
            if reply.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "shim closed the connection",
                ));
            }
            serde_json::from_str(&reply).map_err(std::io::Error::from)
        };
        let answered = match wait {
            Some(wait) => tokio::time::timeout(wait, exchange).await,
            None => Ok(exchange.await),
        };
        match answered {
            Err(_) => Err(Error::Timeout {
                uid: uid.to_owned(),
            }),
            Ok(result) => match result.map_err(call_err)? {
                Response::Error { message } => Err(Error::Shim {
                    uid: uid.to_owned(),
                    message,
                }),
                ok => Ok(ok),
            },
        }
    }

    /// A stream of `Exited` events from the shim.
    pub async fn subscribe(&self, uid: &str) -> Result<ShimEvents, Error> {
        let mut stream = UnixStream::connect(self.shim(uid).socket())
            .await
            .map_err(|source| Error::Call {
                uid: uid.to_owned(),
                source,
            })?;
        stream
            .write_all(b"{\"op\":\"subscribe\"}\n")
            .await
            .map_err(|source| Error::Call {
                uid: uid.to_owned(),
                source,
            })?;
        // Event lines are short; a default 8 KiB buffer per pod adds up to megabytes.
        Ok(BufReader::with_capacity(512, stream).lines())
    }

    /// Releases a pod's sandbox (shim, namespaces, mounts, cgroups, containers' directories) or
    /// the whole pod. Best effort and idempotent: every step runs, and every failure is returned.
    pub async fn teardown(&self, uid: &str, scope: Scope<'_>) -> Vec<String> {
        let mut errors = Vec::new();
        let dir = self.shim(uid);
        if self.shutdown(uid).await.is_err() {
            kill_stale_shim(&dir);
        }
        for e in dir.release_mounts() {
            errors.push(nodelet_sandbox::shim::error_chain(&e));
        }
        if let Ok(data) = std::fs::read(dir.config()) {
            if let Ok(spec) = serde_json::from_slice::<SandboxSpec>(&data) {
                if let Some(cg) = spec.cgroup {
                    if let Err(e) = cgroup::remove(&cg.path) {
                        errors.push(nodelet_sandbox::shim::error_chain(&e));
                    }
                }
            }
        }
        let pod_root = self.paths.pod_root(uid);
        let containers = pod_root.join("containers");
        let api_volumes = self.paths.api_volumes_of(uid);
        let (pod_dir, named, api_volumes) = match scope {
            Scope::Sandbox => (containers.as_path(), None, None),
            Scope::Pod { logs } => (pod_root.as_path(), logs, Some(api_volumes.as_path())),
        };
        if matches!(scope, Scope::Pod { .. }) {
            errors.extend(unmount_memory_volumes(&pod_root));
        }
        let log_dir = named.map(|p| self.paths.pod_logs(p.namespace, p.name, uid));
        if let (Some(p), Some(dir)) = (named, &log_dir) {
            crate::pod::loglinks::unlink_pod(&self.paths, p.namespace, p.name, dir);
        }
        for path in [
            Some(dir.path()),
            Some(pod_dir),
            log_dir.as_deref(),
            api_volumes,
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = remove_tree(path) {
                errors.push(e);
            }
        }
        errors
    }
}

/// Unmounts the pod's `medium: Memory` emptyDir volumes (tmpfs mounts the agent made), so that
/// its directory can go.
fn unmount_memory_volumes(pod_root: &std::path::Path) -> Vec<String> {
    let dir = pod_root.join("volumes/kubernetes.io~empty-dir");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if crate::pod::volumes::is_mount_point(&path) {
            if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("unmount {}: {e}", path.display()));
            }
        }
    }
    errors
}

fn unexpected(uid: &str, request: &'static str, got: &Response) -> Error {
    Error::Unexpected {
        uid: uid.to_owned(),
        request,
        got: format!("{got:?}"),
    }
}

/// Whether a pod's shim still runs, as far as the agent can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Its process is gone (or, with no pid recorded, its socket is missing or refuses
    /// connections): the pod's sandbox is lost.
    Gone,
}

impl Runtime {
    /// Tells a shim that is gone from one that only failed to answer. A timeout, `EMFILE`, or a
    /// reply that does not parse says nothing about the shim, so anything short of proof that it
    /// is gone is `Alive`: the caller retries, and a running pod is never torn down for it.
    pub async fn liveness(&self, uid: &str) -> Liveness {
        let dir = self.shim(uid);
        match shim_pid(&dir) {
            Some(pid) => match is_shim_of(pid, &dir) {
                Ok(true) => Liveness::Alive,
                Ok(false) => Liveness::Gone,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Liveness::Gone,
                Err(_) => Liveness::Alive,
            },
            None => match UnixStream::connect(dir.socket()).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Liveness::Gone
                }
                _ => Liveness::Alive,
            },
        }
    }
}

fn shim_pid(dir: &ShimDir) -> Option<i32> {
    std::fs::read_to_string(dir.pid_file())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
}

/// Whether `pid` is the shim of this directory (pids are reused). A zombie has an empty
/// command line, and so is not.
fn is_shim_of(pid: i32, dir: &ShimDir) -> std::io::Result<bool> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let expected = format!("nodelet-shim\0{}", dir.path().display());
    Ok(cmdline
        .windows(expected.len())
        .any(|w| w == expected.as_bytes()))
}

/// A shim that no longer answers (hung or half-dead) is SIGKILLed by the pid it wrote, after
/// checking that pid still is a shim of this directory.
fn kill_stale_shim(dir: &ShimDir) {
    let Some(pid) = shim_pid(dir) else {
        return;
    };
    if is_shim_of(pid, dir).unwrap_or(false) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a directory tree, refusing to if anything is still mounted below it: host data bound
/// into a container must never be reached through a pod directory.
fn remove_tree(path: &Path) -> Result<(), String> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    unmount_below(path)?;
    std::fs::remove_dir_all(path).map_err(|e| format!("remove {}: {e}", path.display()))
}

/// Unmounts every mount at or below `path` (files too: pinned namespaces), walking the tree and
/// asking statx of each entry, never following a symlink: what the tree holds, not what the
/// whole mount table holds (reading /proc/self/mountinfo for each of a thousand pods' trees
/// made deleting them quadratic).
fn unmount_below(path: &Path) -> Result<(), String> {
    // A mount may be stacked on another: a few unmounts at most.
    for _ in 0..8 {
        if !crate::pod::volumes::is_mount_point(path) {
            break;
        }
        let _ = mount::unmount(path);
    }
    if crate::pod::volumes::is_mount_point(path) {
        return Err(format!(
            "not removing {}: something is still mounted on it",
            path.display()
        ));
    }
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    for entry in entries.flatten() {
        unmount_below(&entry.path())?;
    }
    Ok(())
}
