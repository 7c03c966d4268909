//! `exec` and `attach` over SPDY/3.1 (one stream per channel: error, stdin, stdout, stderr,
//! resize) or WebSocket (one byte of channel per message: 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize, and in v5 255 to close a channel), ending with a `metav1.Status` on the error
//! channel that carries the exit code as kubelet reports it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::WebSocketStream;

use super::exec::{self, Exec, ExecRequest, Outcome};
use super::spdy;
use super::streams::Io;
use crate::node::Node;

pub const SPDY_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
pub const WEBSOCKET_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// kubelet's streamCreationTimeout.
const STREAM_WAIT: Duration = Duration::from_secs(30);
/// How long output may still drain after the command exited.
const DRAIN: Duration = Duration::from_secs(2);

pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

pub fn exit_status(code: i32) -> Value {
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

pub fn internal_error(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

fn outcome_status(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Exited(0) => success(),
        Outcome::Exited(code) => exit_status(code),
        Outcome::Failed(text) => {
            internal_error(&format!("error executing command in container: {text}"))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u16,
    height: u16,
}

/// The running side of a session: what is fed to stdin and where output goes.
enum Session {
    Exec(Box<Exec>),
    /// `attach`: the container's output from now on (its log), and its input if it has one.
    Attach(mpsc::Receiver<Bytes>, Attached),
}

/// The attached container's input side.
#[derive(Default)]
struct Attached {
    /// Where the session's stdin goes, when the client sends one and the container reads one.
    input: Option<AttachInput>,
    /// The controlling side of its terminal (`tty: true`), for window sizes.
    terminal: Option<OwnedFd>,
}

struct AttachInput {
    node: Arc<Node>,
    uid: String,
    id: String,
    to: Stdin,
    /// `stdinOnce`: the process reads EOF (or its terminal hangs up) when this session's input
    /// ends.
    once: bool,
}

enum Stdin {
    /// The container's stdin FIFO (`stdin: true`).
    Fifo(std::path::PathBuf),
    /// Its terminal (`stdin: true, tty: true`).
    Terminal(OwnedFd),
}

/// The input side of the attached container's running instance: its stdin if its spec asks
/// for one and the client sends one (a container without stdin discards the input, as
/// containerd does), and its terminal.
async fn attached(node: &Arc<Node>, req: &ExecRequest) -> Attached {
    let Some((uid, id, c)) = attach_target(node, req) else {
        return Attached::default();
    };
    let terminal = if c.tty == Some(true) {
        match node.runtime.terminal(&uid, &id).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "the container's terminal");
                None
            }
        }
    } else {
        None
    };
    let to = match &terminal {
        _ if !req.stdin || c.stdin != Some(true) => None,
        Some(t) => t.try_clone().ok().map(Stdin::Terminal),
        None if c.tty == Some(true) => None,
        None => Some(Stdin::Fifo(
            node.runtime.shim(&uid).path().join(format!("stdin-{id}")),
        )),
    };
    Attached {
        input: to.map(|to| AttachInput {
            node: node.clone(),
            uid,
            id,
            to,
            once: c.stdin_once == Some(true),
        }),
        terminal,
    }
}

/// The attached container's pod uid, running instance id and spec.
fn attach_target(
    node: &Arc<Node>,
    req: &ExecRequest,
) -> Option<(String, String, k8s_openapi::api::core::v1::Container)> {
    let (uid, reported) = node.find_pod(&req.namespace, &req.pod)?;
    let pod = &reported.pod;
    let spec = pod.spec.as_ref()?;
    let ephemeral = crate::pod::build::ephemeral_containers(pod);
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .chain(&ephemeral)
        .find(|c| c.name == req.container)?;
    let status = crate::pod::status::find(&reported.status, &req.container)?;
    let id = crate::pod::status::runtime_id(status.container_id.as_deref()?)?.to_owned();
    Some((uid, id, c.clone()))
}

/// Copies an attach session's input into the container's stdin until the client closes it;
/// with `stdinOnce`, the process then reads EOF.
async fn feed_stdin(input: mpsc::Receiver<Bytes>, to: AttachInput) {
    let fed = match &to.to {
        Stdin::Fifo(fifo) => feed_fifo(input, fifo).await,
        Stdin::Terminal(t) => feed_terminal(input, t).await,
    };
    if let Err(e) = fed {
        tracing::warn!(error = %e, container = %to.id, "write the container's stdin");
    }
    if to.once {
        if let Err(e) = to.node.runtime.close_stdin(&to.uid, &to.id).await {
            tracing::warn!(error = %crate::error_chain(&e), "close the container's stdin");
        }
    }
}

async fn feed_fifo(
    mut input: mpsc::Receiver<Bytes>,
    fifo: &std::path::Path,
) -> std::io::Result<()> {
    let mut pipe = tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo)?;
    while let Some(b) = input.recv().await {
        pipe.write_all(&b).await?;
    }
    Ok(())
}

/// Writes to the terminal's controlling side, which the shim reads without blocking (the
/// flag belongs to the open file, shared with the shim's descriptor): each write waits until
/// the terminal takes input.
async fn feed_terminal(
    mut input: mpsc::Receiver<Bytes>,
    terminal: &OwnedFd,
) -> std::io::Result<()> {
    // SAFETY: an OwnedFd is open and refers to the same open file until the AsyncFd drops it.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(terminal.try_clone()?) }
        .map_err(std::io::Error::from)?;
    while let Some(b) = input.recv().await {
        let mut rest = &b[..];
        while !rest.is_empty() {
            let mut ready = fd.writable().await?;
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), rest).map_err(Into::into)) {
                Ok(n) => rest = &rest[n?..],
                Err(_would_block) => continue,
            }
        }
    }
    Ok(())
}

/// Applies each window size the client sends (`{"Width":..,"Height":..}` objects, however the
/// stream cuts them) to the terminal.
async fn follow_sizes(mut sizes: mpsc::Receiver<Bytes>, terminal: OwnedFd) {
    let mut pending = Vec::new();
    while let Some(b) = sizes.recv().await {
        pending.extend_from_slice(&b);
        let mut de = serde_json::Deserializer::from_slice(&pending).into_iter::<Size>();
        let mut used = 0;
        while let Some(Ok(size)) = de.next() {
            used = de.byte_offset();
            let _ = nodelet_sandbox::sys::set_window_size(
                std::os::fd::AsFd::as_fd(&terminal),
                size.width,
                size.height,
            );
        }
        pending.drain(..used);
    }
}

/// Copies a reader into a channel of chunks until EOF (a terminal's EIO counts as EOF).
fn pump_out(mut from: Box<dyn AsyncRead + Send + Unpin>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

async fn start(node: &Arc<Node>, req: &ExecRequest, attach: bool) -> Result<Session, Value> {
    if attach {
        let options = super::logs::LogOptions {
            follow: true,
            tail_lines: Some(0),
            ..Default::default()
        };
        let log = super::logs::stream(
            node.clone(),
            &req.namespace,
            &req.pod,
            &req.container,
            options,
        )
        .await
        .map_err(|e| internal_error(&e.to_string()))?;
        return Ok(Session::Attach(log, attached(node, req).await));
    }
    exec::start(node.clone(), req)
        .await
        .map(|e| Session::Exec(Box::new(e)))
        .map_err(|e| internal_error(&e.to_string()))
}

/// Runs a session over SPDY.
pub async fn serve_spdy<T>(node: Arc<Node>, io: T, req: ExecRequest, attach: bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (tx, mut incoming) = mpsc::channel(8);
    let conn = tokio::spawn(spdy::serve(io, tx));
    let mut wanted = vec!["error"];
    if req.stdin {
        wanted.push("stdin");
    }
    if req.stdout {
        wanted.push("stdout");
    }
    if req.stderr && !req.tty {
        wanted.push("stderr");
    }
    if req.tty {
        wanted.push("resize");
    }
    let mut streams: HashMap<String, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::sleep(STREAM_WAIT);
    tokio::pin!(deadline);
    while !wanted.iter().all(|w| streams.contains_key(*w)) {
        tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => { streams.insert(s.headers.get("streamtype").cloned().unwrap_or_default(), s); }
                None => return,
            },
            _ = &mut deadline => {
                if let Some(e) = streams.get("error") {
                    e.out.finish(internal_error("timed out waiting for client to create streams").to_string().as_bytes()).await;
                }
                return;
            }
        }
    }
    let error = streams.remove("error").expect("error stream");
    let session = match start(&node, &req, attach).await {
        Ok(s) => s,
        Err(status) => {
            error.out.finish(status.to_string().as_bytes()).await;
            let _ = tokio::time::timeout(DRAIN, conn).await;
            return;
        }
    };
    let stdout = streams.remove("stdout").map(|s| s.out);
    let stderr = streams.remove("stderr").map(|s| s.out);
    let stdin = streams.remove("stdin").map(|s| s.incoming);
    let resize = streams.remove("resize").map(|s| s.incoming);
    let status = run(
        session,
        stdin,
        resize,
        |channel, data| {
            let target = if channel == 2 {
                stderr.clone()
            } else {
                stdout.clone()
            };
            async move {
                match target {
                    Some(t) => t.send(&data).await,
                    None => true,
                }
            }
        },
        conn_closed(&conn),
    )
    .await;
    for out in [&stdout, &stderr].into_iter().flatten() {
        out.finish(&[]).await;
    }
    if let Some(status) = status {
        error.out.finish(status.to_string().as_bytes()).await;
    }
    // The client closes the connection once it has the status.
    let _ = tokio::time::timeout(DRAIN, conn).await;
}

async fn conn_closed(conn: &tokio::task::JoinHandle<()>) {
    while !conn.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Feeds input and resizes to the session and its output to `write(channel, data)` until it
/// ends. Returns the status to report, or `None` if the client went away (the command is
/// then killed).
async fn run<W, F>(
    session: Session,
    stdin: Option<mpsc::Receiver<Bytes>>,
    resize: Option<mpsc::Receiver<Bytes>>,
    write: W,
    client_gone: impl std::future::Future<Output = ()>,
) -> Option<Value>
where
    W: Fn(u8, Bytes) -> F,
    F: std::future::Future<Output = bool>,
{
    let mut exec = match session {
        Session::Attach(mut log, attached) => {
            if let (Some(stdin), Some(to)) = (stdin, attached.input) {
                tokio::spawn(feed_stdin(stdin, to));
            }
            if let (Some(sizes), Some(terminal)) = (resize, attached.terminal) {
                tokio::spawn(follow_sizes(sizes, terminal));
            }
            tokio::pin!(client_gone);
            loop {
                tokio::select! {
                    b = log.recv() => match b {
                        Some(b) => if !write(1, b).await { return None },
                        None => return Some(success()),
                    },
                    _ = &mut client_gone => return None,
                }
            }
        }
        Session::Exec(e) => e,
    };
    if let (Some(mut input), Some(mut to)) = (stdin, exec.stdin.take()) {
        tokio::spawn(async move {
            while let Some(b) = input.recv().await {
                if to.write_all(&b).await.is_err() {
                    break;
                }
                let _ = to.flush().await;
            }
            let _ = to.shutdown().await;
        });
    }
    let terminal = exec.terminal.as_ref().and_then(|t| t.try_clone().ok());
    if let (Some(sizes), Some(terminal)) = (resize, terminal) {
        tokio::spawn(follow_sizes(sizes, terminal));
    }
    let mut out = exec.stdout.take().map(pump_out);
    let mut err = exec.stderr.take().map(pump_out);
    let waiting = exec.wait();
    tokio::pin!(waiting);
    tokio::pin!(client_gone);
    let mut outcome = None;
    let mut drain_until = None;
    loop {
        if out.is_none() && err.is_none() && outcome.is_some() {
            break;
        }
        let drain = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            b = async { out.as_mut().unwrap().recv().await }, if out.is_some() => match b {
                Some(b) => if !write(1, b).await { return None },
                None => out = None,
            },
            b = async { err.as_mut().unwrap().recv().await }, if err.is_some() => match b {
                Some(b) => if !write(2, b).await { return None },
                None => err = None,
            },
            o = &mut waiting, if outcome.is_none() => {
                outcome = Some(o);
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            _ = drain => break,
            _ = &mut client_gone, if outcome.is_none() => return None,
        }
    }
    outcome.map(outcome_status)
}

/// A close frame with status 1000: clients read it as the end of every channel (a close without
/// a status is an error to them).
fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Runs a session over WebSocket (`v4.channel.k8s.io` or `v5.channel.k8s.io`).
pub async fn serve_websocket(
    node: Arc<Node>,
    ws: WebSocketStream<Io>,
    req: ExecRequest,
    attach: bool,
    v5: bool,
) {
    let (sink, mut source) = ws.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let send = |channel: u8, data: Bytes| {
        let sink = sink.clone();
        async move {
            let mut msg = Vec::with_capacity(data.len() + 1);
            msg.push(channel);
            msg.extend_from_slice(&data);
            sink.lock()
                .await
                .send(Message::Binary(msg.into()))
                .await
                .is_ok()
        }
    };
    let session = match start(&node, &req, attach).await {
        Ok(s) => s,
        Err(status) => {
            send(3, Bytes::from(status.to_string())).await;
            let _ = sink.lock().await.send(normal_close()).await;
            return;
        }
    };
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(m) => match super::streams::payload(&m) {
                    Some(d) => d,
                    None => continue,
                },
            };
            match data.first() {
                Some(0) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(data.slice(1..)).await;
                    }
                }
                Some(4) => {
                    let _ = resize_tx.send(data.slice(1..)).await;
                }
                // v5: [255, channel] closes that channel; only stdin can be closed by a client.
                Some(255) if v5 && data.get(1) == Some(&0) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let status = run(
        session,
        req.stdin.then_some(stdin_rx),
        req.tty.then_some(resize_rx),
        send,
        async {
            let _ = gone_rx.await;
        },
    )
    .await;
    if let Some(status) = status {
        send(3, Bytes::from(status.to_string())).await;
        let _ = sink.lock().await.send(normal_close()).await;
        let _ = tokio::time::timeout(DRAIN, reader).await;
    }
}
