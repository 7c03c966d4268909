//! The handlers that probes and lifecycle hooks run (kubelet's `prober` and `lifecycle`
//! packages): a command in the container, an HTTP GET, a TCP connect, a gRPC health check, a
//! sleep. Network handlers dial the pod's IP from the node, as kubelet does, so an image needs no
//! curl for its probes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, SleepAction,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

use crate::node::Node;

/// The kubelet release whose `kube-probe/…` user agent probes send.
const KUBE_VERSION: &str = "1.33";
/// The most of a response body kept (kubelet's `maxRespBodyLength`).
const MAX_BODY: usize = 10 * 1024;
/// Redirects followed before a probe fails (Go's http.Client).
const MAX_REDIRECTS: usize = 10;

/// What one handler does, resolved against its container (named ports looked up).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http(HttpGet),
    Tcp { host: Option<String>, port: u16 },
    Grpc { port: u16, service: String },
    Sleep(Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpGet {
    pub https: bool,
    /// `None`: the pod's IP.
    pub host: Option<String>,
    pub port: u16,
    /// Path and query, as given (`/` when empty).
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// How a handler went, with the text kubelet reports (probe events, hook messages).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Success,
    /// Succeeded with something to say (an HTTP redirect to another host: kubelet's `Warning`).
    Warning(String),
    Failure(String),
}

/// Who runs it: the pod's UID and IP, and the instance (id, first process) for `exec`.
#[derive(Clone)]
pub struct Target {
    pub node: Arc<Node>,
    pub uid: String,
    pub id: String,
    pub pid: i32,
    pub pod_ip: Option<IpAddr>,
}

/// The handler's single action; `Err` names what is wrong (validation has made this rare: a
/// named port the container does not declare).
pub fn from_probe(p: &Probe, c: &Container) -> Result<Action, String> {
    one_of(
        c,
        p.exec.as_ref(),
        p.http_get.as_ref(),
        p.tcp_socket.as_ref(),
        p.grpc.as_ref(),
        None,
    )
}

pub fn from_hook(h: &LifecycleHandler, c: &Container) -> Result<Action, String> {
    if h.tcp_socket.is_some() {
        return Err("tcpSocket lifecycle hooks are not supported".into());
    }
    one_of(
        c,
        h.exec.as_ref(),
        h.http_get.as_ref(),
        None,
        None,
        h.sleep.as_ref(),
    )
}

fn one_of(
    c: &Container,
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    grpc: Option<&GRPCAction>,
    sleep: Option<&SleepAction>,
) -> Result<Action, String> {
    if let Some(e) = exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(h) = http {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP");
        return Ok(Action::Http(HttpGet {
            https: scheme.eq_ignore_ascii_case("HTTPS"),
            host: h.host.clone().filter(|h| !h.is_empty()),
            port: port(&h.port, c)?,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }));
    }
    if let Some(t) = tcp {
        return Ok(Action::Tcp {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: port(&t.port, c)?,
        });
    }
    if let Some(g) = grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        return Ok(Action::Grpc {
            port,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    if let Some(s) = sleep {
        return Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
    }
    Err("no handler (exec, httpGet, tcpSocket, grpc or sleep) given".into())
}

/// A port by number, or by the name of one of the container's ports.
pub fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port number: {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", c.name))
        }
    }
}

/// Runs the action; `timeout` bounds it (`None` for hooks, which kubelet does not time out
/// beyond the grace period their caller enforces). `agent` is kubelet's user agent fragment
/// (`probe` or `lifecycle`).
pub async fn run(
    action: &Action,
    target: &Target,
    timeout: Option<Duration>,
    agent: &str,
) -> Outcome {
    let bounded = async {
        match action {
            Action::Exec(command) => exec(command, target, timeout).await,
            Action::Http(get) => http(get, target, agent).await,
            Action::Tcp { host, port } => tcp(host.as_deref(), *port, target).await,
            Action::Grpc { port, service } => grpc(*port, service, target).await,
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Outcome::Success
            }
        }
    };
    match timeout {
        // exec enforces its own timeout (the command is killed); the rest are cut here.
        Some(t) if !matches!(action, Action::Exec(_)) => tokio::time::timeout(t, bounded)
            .await
            .unwrap_or_else(|_| Outcome::Failure(timed_out(action, target, t))),
        _ => bounded.await,
    }
}

/// Runs a lifecycle hook, as kubelet's handler runner: an exec hook fails when its command
/// does, an HTTP hook only when the request cannot be made (the status code is not looked at),
/// a sleep never. `Err` is kubelet's account: `error: …, message: "…"`.
pub async fn run_hook(action: &Action, t: &Target) -> Result<(), String> {
    match action {
        Action::Exec(command) => {
            match crate::kubelet::exec::run_captured(&t.node, &t.uid, &t.id, t.pid, command, None)
                .await
            {
                Ok((0, _)) => Ok(()),
                Ok((code, output)) => Err(format!(
                    "command '{}' exited with {code}: {output}, message: {output:?}",
                    command.join(" ")
                )),
                Err(why) => Err(format!("{why}, message: \"\"")),
            }
        }
        Action::Http(get) => http_once(get, t, "lifecycle").await.map(|_| ()),
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Tcp { .. } | Action::Grpc { .. } => Err("invalid handler".into()),
    }
}

fn timed_out(action: &Action, target: &Target, t: Duration) -> String {
    match action {
        Action::Grpc { .. } => format!(
            "timeout: health rpc did not complete within {}s",
            t.as_secs_f64()
        ),
        Action::Http(g) => format!(
            "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            url(g, target)
        ),
        Action::Tcp { host, port } => format!(
            "dial tcp {}:{port}: i/o timeout",
            host_of(host.as_deref(), target)
        ),
        _ => format!("timed out after {}s", t.as_secs_f64()),
    }
}

async fn exec(command: &[String], t: &Target, timeout: Option<Duration>) -> Outcome {
    match crate::kubelet::exec::run_captured(&t.node, &t.uid, &t.id, t.pid, command, timeout).await
    {
        Ok((0, _)) => Outcome::Success,
        Ok((_, output)) => Outcome::Failure(output),
        Err(why) => Outcome::Failure(why),
    }
}

fn host_of(host: Option<&str>, t: &Target) -> String {
    match (host, t.pod_ip) {
        (Some(h), _) => h.to_owned(),
        (None, Some(IpAddr::V6(ip))) => format!("[{ip}]"),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => String::new(),
    }
}

fn url(g: &HttpGet, t: &Target) -> String {
    let scheme = if g.https { "https" } else { "http" };
    format!(
        "{scheme}://{}:{}{}",
        host_of(g.host.as_deref(), t),
        g.port,
        g.path
    )
}

async fn tcp(host: Option<&str>, port: u16, t: &Target) -> Outcome {
    let addr = format!("{}:{port}", host_of(host, t));
    match TcpStream::connect(&addr).await {
        Ok(_) => Outcome::Success,
        Err(e) => Outcome::Failure(format!("dial tcp {addr}: connect: {}", dial_error(&e))),
    }
}

/// Go's wording of a connect error ("connection refused", "no route to host").
fn dial_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code)
            .desc()
            .to_ascii_lowercase(),
        None => e.to_string(),
    }
}

/// kubelet's `DoHTTPProbe`: 2xx succeeds, 3xx that could not be followed succeeds with a warning,
/// anything else fails with the status code (never the body: it may hold secrets).
async fn http(g: &HttpGet, t: &Target, agent: &str) -> Outcome {
    let mut get = g.clone();
    for _ in 0..=MAX_REDIRECTS {
        let (status, location, body) = match http_once(&get, t, agent).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failure(format!("Get \"{}\": {e}", url(&get, t))),
        };
        if (300..400).contains(&status) {
            // Followed only to the same host (kubelet's `RedirectChecker(false)`); otherwise the
            // redirect is the answer.
            let host = host_of(get.host.as_deref(), t);
            match location.and_then(|l| redirect(&get, &host, &l)) {
                Some(next) => {
                    get = next;
                    continue;
                }
                None => {
                    return Outcome::Warning(format!(
                        "Probe terminated redirects, Response body: {body}"
                    ))
                }
            }
        }
        return if (200..400).contains(&status) {
            Outcome::Success
        } else {
            Outcome::Failure(format!("HTTP probe failed with statuscode: {status}"))
        };
    }
    Outcome::Failure(format!(
        "Get \"{}\": stopped after 10 redirects",
        url(&get, t)
    ))
}

/// The request a same-host redirect leads to, or `None` when it goes to another host.
fn redirect(from: &HttpGet, host: &str, location: &str) -> Option<HttpGet> {
    if location.starts_with('/') {
        return Some(HttpGet {
            path: location.to_owned(),
            ..from.clone()
        });
    }
    let (scheme, rest) = location.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (name, port) = match authority.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || authority.ends_with(']') => (n, p.parse().ok()?),
        _ => (authority, if scheme == "https" { 443 } else { 80 }),
    };
    (name == host).then(|| HttpGet {
        https: scheme.eq_ignore_ascii_case("https"),
        host: from.host.clone(),
        port,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        },
        headers: from.headers.clone(),
    })
}

type Answer = (u16, Option<String>, String);

async fn http_once(g: &HttpGet, t: &Target, agent: &str) -> Result<Answer, String> {
    let host = host_of(g.host.as_deref(), t);
    let stream = TcpStream::connect((host.trim_matches(['[', ']']), g.port))
        .await
        .map_err(|e| format!("dial tcp {host}:{}: connect: {}", g.port, dial_error(&e)))?;
    let mut req = hyper::Request::get(g.path.as_str())
        .header("User-Agent", format!("kube-{agent}/{KUBE_VERSION}"))
        .header("Accept", "*/*")
        .header("Connection", "close");
    let mut has_host = false;
    for (name, value) in &g.headers {
        has_host |= name.eq_ignore_ascii_case("host");
        req = req.header(name.as_str(), value.as_str());
    }
    if !has_host {
        req = req.header("Host", format!("{host}:{}", g.port));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("build request: {e}"))?;
    if g.https {
        // Probes do not verify certificates (kubelet's `InsecureSkipVerify`).
        let mut ssl = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
            .map_err(|e| e.to_string())?;
        ssl.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = ssl
            .build()
            .configure()
            .and_then(|c| c.verify_hostname(false).into_ssl(&host))
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(|e| e.to_string())?;
        std::pin::Pin::new(&mut tls)
            .connect()
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(hyper_util::rt::TokioIo::new(tls), req).await
    } else {
        send(hyper_util::rt::TokioIo::new(stream), req).await
    }
}

async fn send<IO>(io: IO, req: hyper::Request<Full<Bytes>>) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = response.into_body();
            let mut kept = Vec::new();
            while kept.len() < MAX_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = MAX_BODY - kept.len();
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    _ => break,
                }
            }
            Ok((
                status,
                location,
                String::from_utf8_lossy(&kept).into_owned(),
            ))
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// The standard gRPC health check (`grpc.health.v1.Health/Check`) over HTTP/2 without TLS, as
/// kubelet's gRPC probe makes it, with the messages kubelet reports.
async fn grpc(port: u16, service: &str, t: &Target) -> Outcome {
    let host = host_of(None, t);
    let target = format!("{host}:{port}");
    let stream = match TcpStream::connect((host.trim_matches(['[', ']']), port)).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at \"{target}\": dial tcp {target}: connect: {}",
                dial_error(&e)
            ))
        }
    };
    let call = async {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        // HealthCheckRequest { string service = 1; } in a gRPC frame: no compression, length.
        let mut message = Vec::new();
        if !service.is_empty() {
            message.push(0x0a);
            push_varint(&mut message, service.len() as u64);
            message.extend_from_slice(service.as_bytes());
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let req = hyper::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", format!("kube-probe/{KUBE_VERSION}"))
            .body(Full::new(Bytes::from(frame)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string());
        let collected = match response {
            Ok(r) => {
                let headers = r.headers().clone();
                r.into_body()
                    .collect()
                    .await
                    .map(|c| (headers, c.trailers().cloned(), c.to_bytes()))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        conn.abort();
        collected
    };
    let (headers, trailers, body) = match call.await {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("error: health rpc probe failed: {e}")),
    };
    // A gRPC error comes in the trailers, or in the headers of a trailers-only response.
    let code = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(2);
    let message = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-message"))
        .or_else(|| headers.get("grpc-message"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if code == 12 {
        return Outcome::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): rpc error: code = Unimplemented desc = {message}"
        ));
    }
    if code != 0 {
        return Outcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {} desc = {message}",
            grpc_code(code)
        ));
    }
    // HealthCheckResponse { ServingStatus status = 1; }: SERVING is 1.
    let status = serving_status(body.get(5..).unwrap_or_default());
    if status == 1 {
        Outcome::Success
    } else {
        let name = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
            .get(status as usize)
            .copied()
            .unwrap_or("UNKNOWN");
        Outcome::Failure(format!("service unhealthy (responded with \"{name}\")"))
    }
}

fn grpc_code(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field 1 (varint) of a protobuf message; 0 when absent (proto3's default).
fn serving_status(mut m: &[u8]) -> u64 {
    let varint = |m: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = m.split_first()?;
            *m = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let mut status = 0;
    while let Some(key) = varint(&mut m) {
        match key & 7 {
            0 => {
                let Some(v) = varint(&mut m) else { break };
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let Some(len) = varint(&mut m) else { break };
                m = m.get(len as usize..).unwrap_or_default();
            }
            1 => m = m.get(8..).unwrap_or_default(),
            5 => m = m.get(4..).unwrap_or_default(),
            _ => break,
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn ports_by_number_and_by_name() {
        let c = container("{name: a, ports: [{name: http, containerPort: 8080}]}");
        assert_eq!(port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(port(&IntOrString::String("8081".into()), &c), Ok(8081));
        assert!(port(&IntOrString::String("grpc".into()), &c).is_err());
        assert!(port(&IntOrString::Int(0), &c).is_err());
        assert!(port(&IntOrString::Int(70000), &c).is_err());
    }

    #[test]
    fn health_responses_decode() {
        assert_eq!(serving_status(&[0x08, 0x01]), 1);
        assert_eq!(serving_status(&[0x08, 0x02]), 2);
        assert_eq!(serving_status(&[]), 0);
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(serving_status(&[0x12, 0x02, b'h', b'i', 0x08, 0x01]), 1);
        assert_eq!(serving_status(&[0x08]), 0);
    }

    #[test]
    fn redirects_follow_only_the_same_host() {
        let from = HttpGet {
            https: false,
            host: Some("10.0.0.5".into()),
            port: 8080,
            path: "/a".into(),
            headers: vec![],
        };
        let t = |location: &str| redirect(&from, "10.0.0.5", location);
        assert_eq!(t("/b").map(|g| g.path), Some("/b".into()));
        let other = t("http://10.0.0.5:9090/c").unwrap();
        assert_eq!((other.port, other.path.as_str()), (9090, "/c"));
        assert_eq!(t("http://example.com/"), None);
    }
}
