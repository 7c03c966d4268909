//! `nodelet-shim exec SPEC`: starts a process inside a running container, as `runc exec` does.
//!
//! This helper runs single-threaded (forking is sound): it joins the container's cgroup and its
//! IPC, UTS, network, PID and mount namespaces (the mount namespace last: its root is the
//! container's root), forks so the command is born in the container's PID namespace, and waits.
//! The command dies with the helper (PR_SET_PDEATHSIG), so ending the stream ends the exec.
//! A failure to start goes to `error_file`; the helper's exit status is the command's.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};

use crate::spec::ExecSpec;
use crate::sys::{self, Forked};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container process {0} is not running")]
    NotRunning(i32),
    #[error("join namespace {path}")]
    Join {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("join cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fork")]
    Fork(#[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] crate::init::Error),
    #[error("set up the terminal")]
    Terminal(#[source] std::io::Error),
}

/// The namespaces joined, in order: the mount namespace last, since it changes `/`.
const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs the exec; returns the helper's exit status.
pub fn main(spec: &ExecSpec) -> i32 {
    // Opened before the mount namespace changes: the path is the caller's.
    let mut errors = match File::create(&spec.error_file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "nodelet-shim exec: create {}: {e}",
                spec.error_file.display()
            );
            return 126;
        }
    };
    match run(spec, &mut errors) {
        Ok(code) => code,
        Err(e) => {
            let _ = errors.write_all(crate::shim::error_chain(&e).as_bytes());
            126
        }
    }
}

fn run(spec: &ExecSpec, errors: &mut File) -> Result<i32, Error> {
    let pid = spec.pid;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NotRunning(pid));
    }
    let mut files = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let file = File::open(&path).map_err(|_| Error::NotRunning(pid))?;
        files.push((path, file, flag));
    }
    // A `hostUsers: false` container's user namespace, joined last.
    if let Some(file) =
        crate::ns::foreign_user_namespace(pid).map_err(|_| Error::NotRunning(pid))?
    {
        files.push((
            PathBuf::from(format!("/proc/{pid}/ns/user")),
            file,
            CloneFlags::CLONE_NEWUSER,
        ));
    }
    join_cgroups(pid)?;
    for (path, file, flag) in &files {
        nix::sched::setns(file, *flag).map_err(|source| Error::Join {
            path: path.clone(),
            source,
        })?;
    }
    drop(files);
    // A terminal of the container's own devpts (its /dev/ptmx), as runc makes for `exec -t`; the
    // controlling side goes back to the caller over standard input, a unix socket.
    let terminal = if spec.tty {
        Some(sys::open_terminal().map_err(Error::Terminal)?)
    } else {
        None
    };
    // The child reports its own setup failures through this pipe (close-on-exec: empty on success).
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Fork(e.into()))?;
    match sys::fork().map_err(Error::Fork)? {
        Forked::Child => {
            drop(err_r);
            let _ = errors;
            let err = child(spec, terminal.as_ref().map(|(_, slave, _)| slave)).unwrap_err();
            let _ = File::from(err_w).write_all(crate::shim::error_chain(&err).as_bytes());
            sys::exit_now(127)
        }
        Forked::Parent(child) => {
            drop(err_w);
            if let Some((master, slave, _)) = terminal {
                drop(slave);
                let stdin = std::io::stdin();
                sys::send_fd(
                    std::os::fd::AsFd::as_fd(&stdin),
                    std::os::fd::AsFd::as_fd(&master),
                )
                .map_err(Error::Terminal)?;
            }
            for sig in [
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
                Signal::SIGHUP,
            ] {
                let _ = sys::ignore_signal(sig);
            }
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut File::from(err_r), &mut text);
            let status = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break 1,
                }
            };
            if !text.is_empty() {
                let _ = errors.write_all(text.as_bytes());
                return Ok(126);
            }
            Ok(status)
        }
    }
}

/// Moves the helper into every cgroup of the container's process (cgroup v2's one, or each v1
/// hierarchy's), so the command is counted and limited with the container.
fn join_cgroups(pid: i32) -> Result<(), Error> {
    let me = std::process::id().to_string();
    for procs in cgroup_procs(pid)? {
        std::fs::write(&procs, &me).map_err(|source| Error::Cgroup {
            path: procs.parent().unwrap_or(&procs).to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The `cgroup.procs` files of every cgroup `pid` is in (cgroup v2's one, or each v1
/// hierarchy's).
pub(crate) fn cgroup_procs(pid: i32) -> Result<Vec<PathBuf>, Error> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|_| Error::NotRunning(pid))?;
    Ok(crate::spawn::procs_paths(&text))
}

fn child(spec: &ExecSpec, terminal: Option<&OwnedFd>) -> Result<std::convert::Infallible, Error> {
    sys::reset_signals();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::unistd::setsid();
    if let Some(slave) = terminal {
        for target in 0..3 {
            sys::dup_onto(slave.as_fd(), target).map_err(Error::Terminal)?;
        }
        sys::set_controlling_terminal().map_err(Error::Terminal)?;
    }
    Ok(crate::init::exec_process(&spec.process)?)
}
