//! Starting a container instance from the shim, and what the shim keeps about it: its record,
//! its log pipes, its exit.

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;

use jiff::Timestamp;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};

use super::error_chain;
use super::server::Server;
use crate::logs::{LineSplitter, LogFile, Stream};
use crate::protocol::{ContainerStatus, Exit};
use crate::spec::ContainerSpec;
use crate::sys::{self, Forked};
use crate::{cgroup, init};

pub struct Container {
    pub status: ContainerStatus,
    pub cgroup: Option<PathBuf>,
    /// The shim's own end of the stdin FIFO, held open so the process blocks on read (instead of
    /// seeing EOF) between attach sessions; dropped by `CloseStdin` and at exit.
    pub stdin: Option<fs::File>,
    /// The controlling side of a `tty: true` instance's terminal, for attach sessions (the log
    /// pipe reads another descriptor of it).
    pub terminal: Option<OwnedFd>,
}

/// The FIFO a container with `stdin: true` reads, in the shim's directory.
pub fn stdin_path(dir: &super::ShimDir, id: &str) -> PathBuf {
    dir.path().join(format!("stdin-{id}"))
}

/// One of a container's output pipes (or its terminal), read by the shim and written to the CRI
/// log file.
pub struct LogPipe {
    pub file: fs::File,
    /// The instance it belongs to.
    pub id: String,
    splitter: LineSplitter,
    log: Rc<RefCell<LogFile>>,
    /// A terminal: what arrived is logged at once, an unfinished line as a `P` record, so an
    /// attach session following the log sees a prompt before its line ends.
    terminal: bool,
}

impl LogPipe {
    pub fn write(&mut self, data: &[u8]) {
        let now = Timestamp::now();
        let log = &mut *self.log.borrow_mut();
        let _ = self.splitter.feed(data, now, log);
        if self.terminal {
            let _ = self.splitter.finish(now, log);
        }
    }
    /// Logs what is left to read (without blocking), then the unfinished line.
    pub fn drain_and_finish(mut self, buf: &mut [u8]) {
        let _ = self.file.set_nonblocking();
        while let Ok(n @ 1..) = self.file.read(buf) {
            self.write(&buf[..n]);
        }
        self.finish();
    }

    pub fn finish(&mut self) {
        let _ = self
            .splitter
            .finish(Timestamp::now(), &mut *self.log.borrow_mut());
    }
}

pub(super) trait NonBlocking {
    fn set_nonblocking(&self) -> nix::Result<()>;
}

impl NonBlocking for fs::File {
    fn set_nonblocking(&self) -> nix::Result<()> {
        let flags =
            OFlag::from_bits_truncate(nix::fcntl::fcntl(self, nix::fcntl::FcntlArg::F_GETFL)?);
        nix::fcntl::fcntl(
            self,
            nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )
        .map(drop)
    }
}

/// Takes the shim's children back to its own PID namespace when dropped, on every path out of
/// a create that joined a target's (a failed clone included).
struct PidNamespaceBack(fs::File);

impl Drop for PidNamespaceBack {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.0, CloneFlags::CLONE_NEWPID) {
            tracing::error!(error = %e, "return to the shim's PID namespace");
        }
    }
}

impl Server {
    /// Starts one container; returns its pid (in the shim's PID namespace) or the error text.
    pub(super) fn create(&mut self, spec: ContainerSpec) -> Result<Pid, String> {
        if self.containers.contains_key(&spec.id) {
            return Err(format!("container {} already exists", spec.id));
        }
        let log = LogFile::open(&spec.log_path, spec.log_rotation)
            .map_err(|e| format!("open log {}: {e}", spec.log_path.display()))?;
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("create pipe: {e}"));
        let (release_r, release_w) = pipe()?;
        let (fail_r, fail_w) = pipe()?;
        // stdin: a FIFO the shim holds open for writing, and the process reads.
        let (stdin_keep, stdin_read) = if spec.stdin && !spec.tty {
            let path = stdin_path(&self.dir, &spec.id);
            let _ = fs::remove_file(&path);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("make {}: {e}", path.display()))?;
            let keep = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            let read =
                fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            (Some(keep), Some(OwnedFd::from(read)))
        } else {
            (None, None)
        };
        // Output: two pipes, or a socket the process sends its terminal's controlling side on.
        let (outputs, stdio) = if spec.tty {
            let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
            (
                Outputs::Terminal(ours),
                init::Stdio::Terminal(theirs.into()),
            )
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdio = init::Stdio::Pipes {
                stdin: stdin_read,
                stdout: out_w,
                stderr: err_w,
            };
            (Outputs::Pipes(out_r, err_r), stdio)
        };
        if let Some(cg) = &spec.cgroup {
            cgroup::create(cg).map_err(|e| error_chain(&e))?;
        }
        let mut flags = CloneFlags::CLONE_NEWNS;
        // An ephemeral container with a target joins the target's PID namespace: the shim's
        // children go there for this one clone, then back to the shim's own.
        let joined = match &spec.target {
            Some(id) => {
                let target = self
                    .containers
                    .get(id)
                    .filter(|c| c.status.exit.is_none())
                    .ok_or_else(|| format!("target container instance {id} is not running"))?;
                let path = format!("/proc/{}/ns/pid", target.status.pid);
                let ns = fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                let own = fs::File::open("/proc/self/ns/pid_for_children")
                    .map_err(|e| format!("open the shim's pid namespace: {e}"))?;
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("join the target's PID namespace: {e}"))?;
                Some(PidNamespaceBack(own))
            }
            None => None,
        };
        if joined.is_none() && !self.spec.share_pid && !self.spec.host_pid {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        // hostIPC: the node's /dev/shm, as containerd binds it.
        let shm = if self.spec.host_ipc {
            std::path::PathBuf::from("/dev/shm")
        } else {
            self.dir.shm()
        };
        let pid =
            match sys::clone_process(flags).map_err(|e| format!("clone container process: {e}"))? {
                Forked::Child => {
                    drop((outputs, release_w, fail_r));
                    sys::reset_signals();
                    let pipes = init::Pipes {
                        release: release_r,
                        error: fail_w,
                        stdio,
                    };
                    let userns = match (&self.userns, self.spec.user_namespace) {
                        (Some(fd), Some(map)) => Some(crate::rootfs::UserNamespace {
                            fd: fd.as_fd(),
                            map,
                        }),
                        _ => None,
                    };
                    init::run(&spec, Some(&shm), pipes, userns)
                }
                Forked::Parent(pid) => pid,
            };
        drop(joined);
        drop((stdio, release_r, fail_w));
        let received = release(&spec, pid, release_w, fail_r).and_then(|()| outputs.readers());
        let (readers, terminal) = match received {
            Ok(r) => r,
            Err(message) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                if let Some(cg) = &spec.cgroup {
                    let _ = cgroup::remove(&cg.path);
                }
                return Err(message);
            }
        };
        let log = Rc::new(RefCell::new(log));
        for (file, stream) in readers {
            let file = fs::File::from(file);
            let _ = file.set_nonblocking();
            self.pipes.push(LogPipe {
                file,
                id: spec.id.clone(),
                splitter: LineSplitter::new(stream),
                log: log.clone(),
                terminal: spec.tty,
            });
        }
        let status = ContainerStatus {
            id: spec.id.clone(),
            name: spec.name.clone(),
            attempt: spec.attempt,
            pid: pid.as_raw(),
            started_at: Timestamp::now(),
            exit: None,
            labels: spec.labels.clone(),
        };
        self.persist(&status);
        tracing::info!(container = %spec.id, name = %spec.name, attempt = spec.attempt, pid = pid.as_raw(), "container started");
        self.containers.insert(
            spec.id,
            Container {
                status,
                cgroup: spec.cgroup.map(|c| c.path),
                stdin: stdin_keep,
                terminal,
            },
        );
        Ok(pid)
    }

    /// Records an exit, on disk too, and releases the container's cgroup.
    pub(super) fn record_exit(&mut self, id: &str, code: i32, signal: Option<i32>) -> Option<()> {
        let container = self.containers.get_mut(id)?;
        // OOMKilled when the kernel's OOM killer killed any process of the container and it
        // failed, as containerd reports it (from the cgroup's oom_kill count): the victim is
        // often not pid 1 (`sh -c 'a | b'` exits 137 when `b` is killed; cgroup v2 kills one
        // process, not the group).
        let oom_killed = (signal.is_some() || code != 0)
            && container
                .cgroup
                .as_deref()
                .is_some_and(|cg| cgroup::oom_kills(cg) > 0);
        container.status.exit = Some(Exit {
            code,
            signal,
            finished_at: Timestamp::now(),
            oom_killed,
        });
        let status = container.status.clone();
        container.terminal = None;
        if container.stdin.take().is_some() {
            let _ = fs::remove_file(stdin_path(&self.dir, id));
        }
        if let Some(cg) = container.cgroup.take() {
            if let Err(e) = cgroup::remove(&cg) {
                tracing::warn!(error = %error_chain(&e), "remove container cgroup");
            }
        }
        self.persist(&status);
        Some(())
    }

    /// Writes the record atomically: a reader sees the old or the new one, never half.
    fn persist(&self, status: &ContainerStatus) {
        let path = self.dir.records().join(format!("{}.json", status.id));
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(status)
            .map_err(std::io::Error::from)
            .and_then(|data| fs::write(&tmp, data))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "write container record");
        }
    }
}

/// The shim's side of a new instance's output.
enum Outputs {
    /// stdout's and stderr's read ends.
    Pipes(OwnedFd, OwnedFd),
    /// The socket the process sends its terminal's controlling side on.
    Terminal(UnixStream),
}

/// What the shim reads, by stream, and a terminal's controlling side kept for attach sessions.
type Readers = (Vec<(OwnedFd, Stream)>, Option<OwnedFd>);

impl Outputs {
    /// What to read once the process has exec'd (a terminal was sent before that).
    fn readers(self) -> Result<Readers, String> {
        match self {
            Outputs::Pipes(out, err) => {
                Ok((vec![(out, Stream::Stdout), (err, Stream::Stderr)], None))
            }
            Outputs::Terminal(socket) => {
                let _ = socket.set_nonblocking(true);
                let master = sys::recv_fd(socket.as_fd())
                    .map_err(|e| format!("receive the container's terminal: {e}"))?
                    .ok_or("the container did not send its terminal")?;
                let ours = master
                    .try_clone()
                    .inspect_err(|e| tracing::warn!(error = %e, "keep the container's terminal"))
                    .ok();
                Ok((vec![(master, Stream::Stdout)], ours))
            }
        }
    }
}

/// Puts the new process in its cgroup, lets it run, and waits for its exec (or its error).
fn release(
    spec: &ContainerSpec,
    pid: Pid,
    release_w: OwnedFd,
    fail_r: OwnedFd,
) -> Result<(), String> {
    if let Some(cg) = &spec.cgroup {
        cgroup::add_process(&cg.path, pid).map_err(|e| error_chain(&e))?;
    }
    fs::File::from(release_w)
        .write_all(&[1])
        .map_err(|e| format!("release container: {e}"))?;
    let mut text = String::new();
    let _ = fs::File::from(fail_r).read_to_string(&mut text);
    if text.is_empty() {
        Ok(())
    } else {
        Err(text)
    }
}
