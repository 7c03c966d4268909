//! The container's first process, from clone(2) in the shim to execve(2) of the user's program.
//!
//! It waits until the shim has put it in its cgroup, builds its filesystem, drops privileges and
//! execs. Any failure is written to the error pipe (close-on-exec, so a successful exec closes it
//! empty) and the process exits; the shim reports the text as the container's start error.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

use crate::spec::{ContainerSpec, ProcessSpec};
use crate::{caps, rootfs, sys};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shim did not release the container")]
    NotReleased,
    #[error("set up standard streams")]
    Streams(#[source] std::io::Error),
    #[error("join the pod's user namespace")]
    UserNamespace(#[source] nix::Error),
    #[error("set up the container's terminal")]
    Terminal(#[source] std::io::Error),
    #[error("prepare root filesystem")]
    Rootfs(#[from] rootfs::Error),
    #[error("apply user and capabilities")]
    Caps(#[from] caps::Error),
    #[error("change to working directory {0}")]
    Cwd(PathBuf, #[source] nix::Error),
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec {0}")]
    Exec(PathBuf, #[source] std::io::Error),
    #[error("argument or environment contains a NUL byte")]
    Nul,
}

/// The descriptors the shim hands to a container's init.
pub struct Pipes {
    /// One byte arrives when the shim has placed the process in its cgroup.
    pub release: OwnedFd,
    /// Close-on-exec; receives the error text if setup fails.
    pub error: OwnedFd,
    pub stdio: Stdio,
}

/// Where the container's standard streams go.
pub enum Stdio {
    /// Pipes the shim reads, and stdin the FIFO (`stdin: true`) or /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A terminal made in the container's own devpts once its root is in place, as runc makes
    /// one for `terminal: true`; its controlling side goes back to the shim over this socket.
    Terminal(OwnedFd),
}

/// Runs in the cloned child; never returns.
pub fn run(
    spec: &ContainerSpec,
    shm: Option<&Path>,
    pipes: Pipes,
    userns: Option<rootfs::UserNamespace<'_>>,
) -> ! {
    let Pipes {
        release,
        error,
        stdio,
    } = pipes;
    let err = setup_and_exec(spec, shm, release, stdio, userns).unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let _ = std::fs::File::from(error).write_all(text.as_bytes());
    sys::exit_now(1)
}

fn setup_and_exec(
    spec: &ContainerSpec,
    shm: Option<&Path>,
    release: OwnedFd,
    stdio: Stdio,
    userns: Option<rootfs::UserNamespace<'_>>,
) -> Result<std::convert::Infallible, Error> {
    let mut byte = [0u8; 1];
    if std::fs::File::from(release)
        .read(&mut byte)
        .map_err(Error::Streams)?
        != 1
    {
        return Err(Error::NotReleased);
    }
    // A session of its own: no controlling terminal, and the shim's signals stay the shim's.
    let _ = nix::unistd::setsid();
    let null = || -> Result<OwnedFd, Error> {
        Ok(std::fs::File::open("/dev/null")
            .map_err(Error::Streams)?
            .into())
    };
    let console = match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let input = match stdin {
                Some(fd) => fd,
                None => null()?,
            };
            sys::dup_onto(input.as_fd(), 0).map_err(Error::Streams)?;
            sys::dup_onto(stdout.as_fd(), 1).map_err(Error::Streams)?;
            sys::dup_onto(stderr.as_fd(), 2).map_err(Error::Streams)?;
            None
        }
        Stdio::Terminal(socket) => {
            // Nothing of the shim's (its log on stderr) stays in the container meanwhile.
            let null = null()?;
            for target in 0..3 {
                sys::dup_onto(null.as_fd(), target).map_err(Error::Streams)?;
            }
            Some(socket)
        }
    };

    rootfs::prepare(&spec.rootfs, &spec.mounts, shm, userns)?;
    if let Some(socket) = console {
        let uid = match userns {
            Some(u) => u.map.to_host(spec.process.uid).unwrap_or(u.map.host_id),
            None => spec.process.uid,
        };
        terminal(&socket, uid)?;
    }
    rootfs::protect_paths(&spec.process)?;
    // Last: in its user namespace the process has privileges over that namespace's objects
    // only, and none over the mounts made above.
    if let Some(u) = userns {
        nix::sched::setns(u.fd, nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(Error::UserNamespace)?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    exec_process(&spec.process)
}

/// Makes the container's terminal: a pty of its devpts, owned by the process's user (runc's
/// `fixStdioPermissions`), bound over /dev/console, its standard streams and controlling
/// terminal; the controlling side is sent to the shim. `uid` is the node's id of the user.
fn terminal(socket: &OwnedFd, uid: u32) -> Result<(), Error> {
    let (master, slave, name) = sys::open_terminal().map_err(Error::Terminal)?;
    nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None)
        .map_err(|e| Error::Terminal(e.into()))?;
    rootfs::mount_console(Path::new(&name))?;
    for target in 0..3 {
        sys::dup_onto(slave.as_fd(), target).map_err(Error::Terminal)?;
    }
    sys::set_controlling_terminal().map_err(Error::Terminal)?;
    sys::send_fd(socket.as_fd(), master.as_fd()).map_err(Error::Terminal)?;
    Ok(())
}

/// The last steps of every process started in a container, its first one and `kubectl exec`'s
/// alike: resolve the program on the container's `PATH`, take the user and capabilities, enter
/// the working directory and execve(2) with only the standard streams open.
pub fn exec_process(process: &ProcessSpec) -> Result<std::convert::Infallible, Error> {
    let env = cstrings(&process.env)?;
    let argv = cstrings(&process.args)?;
    let program = find_program(&process.args[0], &process.env)?;
    caps::apply(process)?;
    nix::unistd::chdir(&process.cwd).map_err(|e| Error::Cwd(process.cwd.clone(), e))?;
    sys::cloexec_from(3).map_err(Error::Streams)?;
    let path = CString::new(program.as_os_str().as_bytes()).map_err(|_| Error::Nul)?;
    Err(Error::Exec(program, sys::execve(&path, &argv, &env)))
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, Error> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| Error::Nul))
        .collect()
}

/// execvp(3)'s search, over the container's `PATH` (its filesystem is already `/`).
fn find_program(name: &str, env: &[String]) -> Result<PathBuf, Error> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
        .ok_or_else(|| Error::NotFound(name.to_owned()))
}
