//! The agent's side of `kubectl exec`: find the running container, start `nodelet-shim exec`
//! in it with pipes (or a terminal), and report how the command ended.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;

use nodelet_sandbox::spec::{ExecSpec, ProcessSpec};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::node::Node;

/// What a client asked to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Why an exec could not start, with kubelet's HTTP status for it.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("pod {0} not found")]
    PodNotFound(String),
    #[error("container {container} is not valid for pod {pod}")]
    NoContainer { pod: String, container: String },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Internal(String),
}

type Input = Box<dyn AsyncWrite + Send + Unpin>;
type Output = Box<dyn AsyncRead + Send + Unpin>;

/// A started command.
pub struct Exec {
    pub child: tokio::process::Child,
    pub stdin: Option<Input>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    /// The terminal's controlling side, for window size changes.
    pub terminal: Option<OwnedFd>,
    error_file: std::path::PathBuf,
}

impl Drop for Exec {
    /// However the session ended (a client gone mid-command included), its error file goes;
    /// the helper itself is killed with its `Child` (`kill_on_drop`).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.error_file);
    }
}

/// How the command ended.
pub enum Outcome {
    Exited(i32),
    /// It never ran: the helper's account of why.
    Failed(String),
}

impl Exec {
    pub async fn wait(mut self) -> Outcome {
        let status = self.child.wait().await;
        let error = std::fs::read_to_string(&self.error_file).ok();
        match (error, status) {
            (Some(text), _) if !text.is_empty() => Outcome::Failed(text),
            (_, Ok(s)) => Outcome::Exited(s.code().unwrap_or(1)),
            (_, Err(e)) => Outcome::Failed(format!("wait for exec: {e}")),
        }
    }
}

/// `nodelet-shim exec` for `command` in the instance `id` (its first process `pid`), with the
/// instance's user, capabilities and environment; and the file where it reports a failure to
/// start.
fn helper(
    node: &Node,
    uid: &str,
    id: &str,
    pid: i32,
    command: &[String],
    tty: bool,
) -> Result<(tokio::process::Command, std::path::PathBuf), ExecError> {
    let error_file = node
        .ctx
        .paths
        .run
        .join(format!("exec-{}.err", crate::random_hex(8)));
    let spec = exec_spec(node, uid, id, pid, command, tty, error_file.clone())?;
    let mut cmd = tokio::process::Command::new(crate::runtime::shim_binary());
    cmd.arg("exec")
        .arg(serde_json::to_string(&spec).expect("serialise exec spec"))
        .kill_on_drop(true);
    Ok((cmd, error_file))
}

/// What runs `command` in the instance: its process settings with the command's arguments.
fn exec_spec(
    node: &Node,
    uid: &str,
    id: &str,
    pid: i32,
    command: &[String],
    tty: bool,
    error_file: std::path::PathBuf,
) -> Result<ExecSpec, ExecError> {
    let process_file = node.ctx.paths.container_dir(uid, id).join("process.json");
    let mut process: ProcessSpec = std::fs::read(&process_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ExecError::Internal(format!(
                "the container's process settings ({}) are missing",
                process_file.display()
            ))
        })?;
    process.args = command.to_vec();
    if tty && !process.env.iter().any(|e| e.starts_with("TERM=")) {
        process.env.push("TERM=xterm".into());
    }
    Ok(ExecSpec {
        pid,
        process,
        tty,
        error_file,
    })
}

/// Runs `command` in a running instance without a client (probes and hooks), its stdout and
/// stderr together as kubelet's `CombinedOutput`: its exit status and at most 10 KiB of output.
/// The pod's shim forks it (no helper binary is started: an exec probe costs a fork and the
/// command). `Err` when it could not run, or did not end within `timeout` (it is then killed).
pub async fn run_captured(
    node: &Node,
    uid: &str,
    id: &str,
    pid: i32,
    command: &[String],
    timeout: Option<std::time::Duration>,
) -> Result<(i32, String), String> {
    if command.is_empty() {
        return Err("no command given".into());
    }
    // The shim reports a failure to start in its answer: the spec needs no error file.
    let spec = exec_spec(node, uid, id, pid, command, false, Default::default())
        .map_err(|e| e.to_string())?;
    match node.runtime.exec(uid, spec, timeout).await {
        Ok((Some(code), output)) => Ok((code, output)),
        Ok((None, _)) => Err(format!("command {:?} timed out", command.join(" "))),
        Err(crate::runtime::Error::Shim { message, .. }) => Err(message),
        Err(e) => Err(crate::error_chain(&e)),
    }
}

/// The pod's UID and the running instance's (id, pid) of `container`.
pub async fn find_container(
    node: &Node,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<(String, String, i32), ExecError> {
    let found = node.find_pod(namespace, pod).map(|(uid, p)| {
        let known = p.pod.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == container)
                || s.ephemeral_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
        });
        (uid, known)
    });
    let (uid, known) = found.ok_or_else(|| ExecError::PodNotFound(format!("{namespace}/{pod}")))?;
    if !known {
        return Err(ExecError::NoContainer {
            pod: pod.to_owned(),
            container: container.to_owned(),
        });
    }
    let containers = node
        .runtime
        .state(&uid)
        .await
        .map_err(|_| ExecError::NotRunning(container.to_owned()))?;
    containers
        .into_iter()
        .filter(|c| c.name == container && c.exit.is_none() && c.pid > 0)
        .max_by_key(|c| c.attempt)
        .map(|c| (uid, c.id, c.pid))
        .ok_or_else(|| ExecError::NotRunning(container.to_owned()))
}

/// Starts the command in the container.
pub async fn start(node: Arc<Node>, req: &ExecRequest) -> Result<Exec, ExecError> {
    if req.command.is_empty() {
        return Err(ExecError::Internal("no command given".into()));
    }
    let (uid, id, pid) = find_container(&node, &req.namespace, &req.pod, &req.container).await?;
    let (mut cmd, error_file) = helper(&node, &uid, &id, pid, &req.command, req.tty)?;
    // With a terminal, the helper opens it inside the container and hands back its controlling
    // side over this socket (its standard input); the command's stdio is the terminal.
    let mut terminal_socket = None;
    if req.tty {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| ExecError::Internal(format!("socket pair: {e}")))?;
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        terminal_socket = Some(ours);
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if req.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if req.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecError::Internal(format!("start nodelet-shim exec: {e}")))?;
    drop(cmd);
    let terminal = match terminal_socket {
        Some(socket) => tokio::task::spawn_blocking(move || {
            nodelet_sandbox::sys::recv_fd(std::os::fd::AsFd::as_fd(&socket))
        })
        .await
        .map_err(|e| ExecError::Internal(e.to_string()))?
        .map_err(|e| ExecError::Internal(format!("receive the terminal: {e}")))?,
        None => None,
    };
    if req.tty && terminal.is_none() {
        // The helper failed before it had a terminal: its error file says why.
        return Ok(Exec {
            child,
            stdin: None,
            stdout: None,
            stderr: None,
            terminal: None,
            error_file,
        });
    }
    let (stdin, stdout, stderr): (Option<Input>, Option<Output>, Option<Output>) = match &terminal {
        Some(master) => {
            let file = |fd: &OwnedFd| -> Result<tokio::fs::File, ExecError> {
                let fd = fd
                    .try_clone()
                    .map_err(|e| ExecError::Internal(format!("terminal: {e}")))?;
                Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
            };
            let input = if req.stdin {
                Some(Box::new(file(master)?) as Input)
            } else {
                None
            };
            (input, Some(Box::new(file(master)?)), None)
        }
        None => (
            child.stdin.take().map(|s| Box::new(s) as Input),
            child.stdout.take().map(|s| Box::new(s) as Output),
            child.stderr.take().map(|s| Box::new(s) as Output),
        ),
    };
    Ok(Exec {
        child,
        stdin,
        stdout,
        stderr,
        terminal,
        error_file,
    })
}
