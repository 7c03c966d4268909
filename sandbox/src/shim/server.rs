//! The shim's event loop: one poll(2) over the SIGCHLD signalfd, the listening socket and every
//! container's stdout/stderr pipe.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::container::{Container, LogPipe, NonBlocking};
use super::{Error, ShimDir};
use crate::protocol::{self, ContainerStatus, Request, Response};
use crate::spec::SandboxSpec;
use crate::{cgroup, sys};

pub struct Server {
    pub(super) dir: ShimDir,
    pub(super) spec: SandboxSpec,
    listener: UnixListener,
    signals: SignalFd,
    pub(super) pod_init: Option<Pid>,
    pub(super) containers: HashMap<String, Container>,
    pub(super) pipes: Vec<LogPipe>,
    subscribers: Vec<UnixStream>,
    execs: Vec<Exec>,
}

/// A command run for a probe or hook, until it ends and its caller has the answer.
struct Exec {
    pid: Pid,
    caller: UnixStream,
    output: fs::File,
    kept: Vec<u8>,
    deadline: Option<Instant>,
}

/// The most of an exec's output kept (kubelet's `maxReadLength`).
const MAX_EXEC_OUTPUT: usize = 10 * 1024;

impl Server {
    pub(super) fn new(
        dir: ShimDir,
        spec: SandboxSpec,
        listener: UnixListener,
        pod_init: Option<Pid>,
    ) -> Result<Self, Error> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(Error::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(Error::Signals)?;
        // SIGTERM/SIGINT/SIGHUP aimed at the agent's process group must not end the pod.
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            sys::ignore_signal(sig).map_err(Error::Signals)?;
        }
        Ok(Server {
            dir,
            spec,
            listener,
            signals,
            pod_init,
            containers: HashMap::new(),
            pipes: Vec::new(),
            subscribers: Vec::new(),
            execs: Vec::new(),
        })
    }

    /// Serves until a `Shutdown` request.
    pub fn serve(&mut self) {
        loop {
            let ready = {
                let mut fds = vec![
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(
                    self.pipes
                        .iter()
                        .map(|p| PollFd::new(p.file.as_fd(), PollFlags::POLLIN)),
                );
                fds.extend(
                    self.execs
                        .iter()
                        .map(|e| PollFd::new(e.output.as_fd(), PollFlags::POLLIN)),
                );
                let timeout = self.execs.iter().filter_map(|e| e.deadline).min().map_or(
                    PollTimeout::NONE,
                    |d| {
                        let ms = d.saturating_duration_since(Instant::now()).as_millis();
                        PollTimeout::try_from(ms.min(60_000) as i32 + 1)
                            .unwrap_or(PollTimeout::NONE)
                    },
                );
                match poll(&mut fds, timeout) {
                    Ok(_) => fds
                        .iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect::<Vec<_>>(),
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            };
            // Pipes first: a container's last words are logged before its exit is announced.
            let pipes = self.pipes.len();
            for i in 0..self.execs.len() {
                if ready.get(2 + pipes + i) == Some(&true) {
                    self.execs[i].read();
                }
            }
            for i in (0..pipes).rev() {
                if ready[i + 2] {
                    self.drain_pipe(i);
                }
            }
            self.expire_execs();
            if ready[0] {
                while self.signals.read_signal().ok().flatten().is_some() {}
                self.reap();
            }
            if ready[1] {
                if let Ok((stream, _)) = self.listener.accept() {
                    if self.handle(stream) {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one connection; true when the shim should exit.
    fn handle(&mut self, stream: UnixStream) -> bool {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = match protocol::read_message::<Request>(&mut BufReader::new(&stream)) {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                respond(
                    &stream,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                );
                return false;
            }
        };
        let response = match request {
            Request::Create { spec } => match self.create(*spec) {
                Ok(pid) => Response::Created { pid: pid.as_raw() },
                Err(message) => Response::Error { message },
            },
            Request::Signal { id, signal } => self.signal(&id, signal),
            Request::State => self.state(),
            Request::Remove { id } => self.remove(&id),
            Request::Subscribe => {
                let _ = stream.set_nonblocking(true);
                self.subscribers.push(stream);
                return false;
            }
            Request::Exec { spec, timeout_ms } => match self.exec(&spec, timeout_ms) {
                Ok((pid, output)) => {
                    self.execs.push(Exec {
                        pid,
                        caller: stream,
                        output,
                        kept: Vec::new(),
                        deadline: timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                    });
                    return false;
                }
                Err(message) => Response::Error { message },
            },
            Request::Shutdown => {
                self.shutdown();
                respond(&stream, &Response::Done);
                return true;
            }
        };
        respond(&stream, &response);
        false
    }

    fn signal(&self, id: &str, signal: i32) -> Response {
        let Some(c) = self.containers.get(id) else {
            return Response::Error {
                message: format!("no container {id}"),
            };
        };
        if c.status.exit.is_some() {
            return Response::Done;
        }
        match Signal::try_from(signal) {
            Ok(sig) => match kill(Pid::from_raw(c.status.pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => Response::Done,
                Err(e) => Response::Error {
                    message: format!("signal container {id}: {e}"),
                },
            },
            Err(_) => Response::Error {
                message: format!("invalid signal {signal}"),
            },
        }
    }

    fn state(&self) -> Response {
        let mut containers: Vec<ContainerStatus> =
            self.containers.values().map(|c| c.status.clone()).collect();
        containers.sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
        Response::State {
            shim_pid: std::process::id() as i32,
            containers,
        }
    }

    fn remove(&mut self, id: &str) -> Response {
        match self.containers.get(id) {
            Some(c) if c.status.exit.is_none() => Response::Error {
                message: format!("container {id} is running"),
            },
            _ => {
                self.containers.remove(id);
                let _ = fs::remove_file(self.dir.records().join(format!("{id}.json")));
                Response::Done
            }
        }
    }

    /// Collects every exited child without blocking.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid, 128 + sig as i32, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// Forks the command's runner: in the child, stdout and stderr go to a pipe the shim
    /// reads, and `exec::main` joins the container and runs the command (as `nodelet-shim exec`
    /// does, without loading a binary).
    fn exec(
        &self,
        spec: &crate::spec::ExecSpec,
        _timeout: Option<u64>,
    ) -> Result<(Pid, fs::File), String> {
        use std::os::fd::AsRawFd;
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        match sys::fork().map_err(|e| format!("fork: {e}"))? {
            sys::Forked::Child => {
                // SAFETY: dup2 and open on fds this child owns; it is single-threaded (the shim
                // is), and ends in _exit.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    libc::dup2(null, 0);
                    libc::dup2(write.as_raw_fd(), 1);
                    libc::dup2(write.as_raw_fd(), 2);
                }
                drop(write);
                drop(read);
                // The shim's own signal setup (SIGCHLD blocked for its signalfd, TERM ignored)
                // is not the command's.
                sys::reset_signals();
                let _ = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                sys::exit_now(crate::exec::main(spec))
            }
            sys::Forked::Parent(pid) => {
                drop(write);
                let output = fs::File::from(read);
                let _ = output.set_nonblocking();
                Ok((pid, output))
            }
        }
    }

    /// Kills the execs whose time is up and answers their callers.
    fn expire_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].deadline.is_some_and(|d| d <= now) {
                let mut e = self.execs.swap_remove(i);
                let _ = kill(e.pid, Signal::SIGKILL);
                e.read();
                e.answer(-1, true);
            } else {
                i += 1;
            }
        }
    }

    fn exited(&mut self, pid: Pid, code: i32, signal: Option<i32>) {
        if let Some(i) = self.execs.iter().position(|e| e.pid == pid) {
            let mut e = self.execs.swap_remove(i);
            e.read();
            e.answer(code, false);
            return;
        }
        if Some(pid) == self.pod_init {
            tracing::error!("pod init exited; the shared PID namespace is gone");
            self.pod_init = None;
            return;
        }
        let Some(id) = self
            .containers
            .iter()
            .find(|(_, c)| c.status.pid == pid.as_raw() && c.status.exit.is_none())
            .map(|(id, _)| id.clone())
        else {
            return; // an orphan re-parented to us; nothing to record
        };
        self.record_exit(&id, code, signal);
        tracing::info!(container = %id, code, ?signal, "container exited");
        let event = Response::Exited { id };
        self.subscribers
            .retain_mut(|s| protocol::write_message(s, &event).is_ok());
    }

    fn drain_pipe(&mut self, index: usize) {
        let mut buf = [0u8; 64 * 1024];
        let pipe = &mut self.pipes[index];
        let eof = match pipe.file.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                pipe.write(&buf[..n]);
                false
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                false
            }
            Err(_) => true,
        };
        if eof {
            let mut pipe = self.pipes.swap_remove(index);
            pipe.finish();
        }
    }

    /// Kills everything of the pod, waits for it, and releases the pod's kernel objects.
    fn shutdown(&mut self) {
        let running: Vec<Pid> = self
            .containers
            .values()
            .filter(|c| c.status.exit.is_none())
            .map(|c| Pid::from_raw(c.status.pid))
            .chain(self.pod_init)
            .collect();
        for pid in &running {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = |s: &Self| {
            s.pod_init.is_some() || s.containers.values().any(|c| c.status.exit.is_none())
        };
        while alive(self) && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(2));
        }
        while let Some(mut pipe) = self.pipes.pop() {
            let mut buf = [0u8; 64 * 1024];
            let _ = pipe.file.set_nonblocking();
            while let Ok(n @ 1..) = pipe.file.read(&mut buf) {
                pipe.write(&buf[..n]);
            }
            pipe.finish();
        }
        if let Some(cg) = &self.spec.cgroup {
            if let Err(e) = cgroup::remove(&cg.path) {
                tracing::warn!(error = %super::error_chain(&e), "remove pod cgroup");
            }
        }
        for e in self.dir.release_mounts() {
            tracing::warn!(error = %super::error_chain(&e), "release pod mount");
        }
        tracing::info!(pod_uid = %self.spec.pod_uid, "shim shut down");
    }
}

impl Exec {
    /// Reads what the command wrote so far, keeping the first 10 KiB.
    fn read(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = self.output.read(&mut buf) {
            let room = MAX_EXEC_OUTPUT.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }

    fn answer(self, code: i32, timed_out: bool) {
        let response = Response::Ran {
            code,
            output: String::from_utf8_lossy(&self.kept).into_owned(),
            timed_out,
        };
        respond(&self.caller, &response);
    }
}

fn respond(mut stream: &UnixStream, response: &Response) {
    let _ = stream.set_nonblocking(false);
    let _ = protocol::write_message(&mut stream, response);
}

/// The loop of a PID namespace's init (the pod init of a shared-PID pod, or a test node's pid 1):
/// reap every child, forever.
pub fn reap_forever() -> ! {
    reap(false)
}

/// As `reap_forever`, but SIGTERM ends it (and with it, its PID namespace): the init of a test
/// node, stopped cleanly by whoever started it.
pub fn reap_until_terminated() -> ! {
    reap(true)
}

fn reap(until_terminated: bool) -> ! {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if until_terminated {
        // Blocked, a signal to a namespace's init is queued even without a handler
        // (pid_namespaces(7) ignores only unblocked default-action ones), so sigwait sees it.
        mask.add(Signal::SIGTERM);
    }
    let _ = mask.thread_block();
    // Close inherited descriptors: the shim's ready pipe must see EOF from us.
    sys::close_from(3);
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if mask.wait() == Ok(Signal::SIGTERM) {
            sys::exit_now(0);
        }
    }
}
