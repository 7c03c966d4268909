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
    /// What pipes are read into, one for all: on the heap and zeroed by the allocator, so only
    /// the pages reads have filled are resident (a 64 KiB stack buffer costs all 16 pages of
    /// every shim, most of a pod's private memory).
    buf: Vec<u8>,
    /// Each running container's namespaces and cgroups, by its first process's pid, opened at
    /// its first exec.
    joined: HashMap<i32, crate::spawn::Joined>,
    /// The pod's user namespace (`hostUsers: false`), which containers join last.
    pub(super) userns: Option<fs::File>,
}

/// A command run for a probe or hook, until it ends and its caller has the answer.
struct Exec {
    pid: Pid,
    caller: UnixStream,
    output: fs::File,
    /// The output pipe reached its end (no longer polled).
    closed: bool,
    kept: Vec<u8>,
    /// Where the runner reports a failure to start (close-on-exec: empty when the command ran).
    errors: fs::File,
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
        userns: Option<fs::File>,
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
            joined: HashMap::new(),
            buf: vec![0; 128 * 1024],
            userns,
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
                // An exec whose output ended is not polled (its end would wake poll at once
                // until the runner's exit is reaped).
                let open = PollFlags::POLLIN;
                fds.extend(self.execs.iter().map(|e| {
                    PollFd::new(
                        e.output.as_fd(),
                        if e.closed { PollFlags::empty() } else { open },
                    )
                }));
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
                    self.execs[i].read(&mut self.buf);
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
                    sys::release_free_memory();
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
            Request::CloseStdin { id } => self.close_stdin(&id),
            Request::Terminal { id } => match self.containers.get(&id) {
                Some(Container {
                    terminal: Some(terminal),
                    ..
                }) => {
                    let mut line = serde_json::to_vec(&Response::Done).expect("serialises");
                    line.push(b'\n');
                    if let Err(e) = sys::send_with_fd(stream.as_fd(), &line, terminal.as_fd()) {
                        tracing::warn!(error = %e, container = %id, "send the terminal");
                    }
                    return false;
                }
                Some(_) => Response::Error {
                    message: format!("container {id} has no terminal"),
                },
                None => Response::Error {
                    message: format!("no container {id}"),
                },
            },
            Request::Subscribe => {
                let _ = stream.set_nonblocking(true);
                self.subscribers.push(stream);
                return false;
            }
            Request::Exec { spec, timeout_ms } => match self.exec(&spec) {
                Err(message) => Response::Error { message },
                Ok((pid, output, errors)) => {
                    self.execs.push(Exec {
                        pid,
                        caller: stream,
                        output,
                        closed: false,
                        errors,
                        kept: Vec::new(),
                        deadline: timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                    });
                    return false;
                }
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

    /// Closes an instance's stdin: its FIFO, or its terminal, which is hung up (the process
    /// gets SIGHUP) as containerd closes a console whose stdin ended.
    fn close_stdin(&mut self, id: &str) -> Response {
        let Some(c) = self.containers.get_mut(id) else {
            return Response::Error {
                message: format!("no container {id}"),
            };
        };
        c.stdin = None;
        if c.terminal.take().is_some() {
            while let Some(i) = self.pipes.iter().position(|p| p.id == id) {
                self.pipes.swap_remove(i).drain_and_finish(&mut self.buf);
            }
        }
        Response::Done
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

    /// Starts the command in the container (`exec::spawn_direct`), its stdout and stderr on a
    /// pipe the shim reads.
    fn exec(&mut self, spec: &crate::spec::ExecSpec) -> Result<(Pid, fs::File, fs::File), String> {
        // Only a running container's first process may be joined.
        let running = self
            .containers
            .values()
            .any(|c| c.status.pid == spec.pid && c.status.exit.is_none());
        if !running {
            return Err(format!("container process {} is not running", spec.pid));
        }
        let joined = match self.joined.entry(spec.pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(crate::spawn::Joined::open(spec.pid).map_err(|e| super::error_chain(&e))?)
            }
        };
        let joined = &*joined;
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (read, write) = pipe()?;
        let (errors_r, errors_w) = pipe()?;
        let child = crate::spawn::spawn(spec, joined, write.as_fd(), errors_w)
            .map_err(|e| super::error_chain(&e))?;
        drop(write);
        let output = fs::File::from(read);
        let _ = output.set_nonblocking();
        let errors = fs::File::from(errors_r);
        let _ = errors.set_nonblocking();
        Ok((child, output, errors))
    }

    /// Kills the execs whose time is up and answers their callers.
    fn expire_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].deadline.is_some_and(|d| d <= now) {
                let mut e = self.execs.swap_remove(i);
                let _ = kill(e.pid, Signal::SIGKILL);
                e.read(&mut self.buf);
                e.answer(-1, true);
            } else {
                i += 1;
            }
        }
    }

    fn exited(&mut self, pid: Pid, code: i32, signal: Option<i32>) {
        if let Some(i) = self.execs.iter().position(|e| e.pid == pid) {
            let mut e = self.execs.swap_remove(i);
            e.read(&mut self.buf);
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
        self.joined.remove(&pid.as_raw());
        self.record_exit(&id, code, signal);
        tracing::info!(container = %id, code, ?signal, "container exited");
        let event = Response::Exited { id };
        self.subscribers
            .retain_mut(|s| protocol::write_message(s, &event).is_ok());
    }

    fn drain_pipe(&mut self, index: usize) {
        let buf = &mut self.buf[..];
        let pipe = &mut self.pipes[index];
        let eof = match pipe.file.read(buf) {
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
        while let Some(pipe) = self.pipes.pop() {
            pipe.drain_and_finish(&mut self.buf);
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
    fn read(&mut self, buf: &mut [u8]) {
        loop {
            match self.output.read(buf) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    let room = MAX_EXEC_OUTPUT.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn answer(mut self, code: i32, timed_out: bool) {
        let mut error = String::new();
        let _ = self.errors.read_to_string(&mut error);
        let response = if error.is_empty() {
            Response::Ran {
                code,
                output: String::from_utf8_lossy(&self.kept).into_owned(),
                timed_out,
            }
        } else {
            Response::Error { message: error }
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
