//! The kubelet API on port 10250, what kube-apiserver (and nodelet's built-in API, in process)
//! calls for `kubectl logs`, `exec`, `attach` and `port-forward`: `/healthz`, `/pods`,
//! `/containerLogs/{ns}/{pod}/{container}`, `/exec|attach/{ns}/{pod}[/{uid}]/{container}` and
//! `/portForward/{ns}/{pod}[/{uid}]`, over HTTPS with client certificates signed by the
//! configured CA. Anonymous requests are refused at the TLS handshake.

pub mod exec;
pub mod healthz;
pub mod logs;
mod portforward;
mod remotecommand;
pub mod spdy;
pub mod streams;
pub mod summary;

use std::sync::Arc;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslAcceptor;
use openssl::x509::X509;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::info;

use self::exec::ExecRequest;
use self::streams::Transport;
use crate::node::Node;

use crate::https::full;
pub use crate::https::Body;

/// A `metav1.Status` failure, as kube-apiserver relays kubelet errors.
pub fn status_error(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    full(code, "application/json", status.to_string())
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    }
}

/// What a streaming request asks for, in either API's parameter names.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, names: &[&str]) -> bool {
        names
            .iter()
            .any(|n| matches!(self.get(n), Some("1" | "true" | "True")))
    }
}

/// The node's streaming server, shared by the 10250 listener and the built-in API.
#[derive(Clone)]
pub struct Kubelet {
    pub node: Arc<Node>,
    /// The API server that checks bearer tokens (TokenReview), once the node has a client.
    reviewer: Arc<std::sync::OnceLock<kube::Client>>,
    /// Token (hashed) -> (authenticated, when checked): kubelet caches reviews too.
    reviewed:
        Arc<std::sync::Mutex<std::collections::HashMap<String, (Review, std::time::Instant)>>>,
}

/// What TokenReview said of a bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Review {
    /// A `system:masters` user.
    Admin,
    /// Someone else (a service account): authenticated, and not authorized.
    User(String),
    Refused,
}

/// How long a TokenReview answer is trusted (kubelet's defaults: 2 min, 30 s for a refusal).
const REVIEW_TTL: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(120),
    std::time::Duration::from_secs(30),
);

impl Kubelet {
    pub fn new(node: Arc<Node>) -> Kubelet {
        Kubelet {
            node,
            reviewer: Default::default(),
            reviewed: Default::default(),
        }
    }

    /// From now on, bearer tokens are checked with this API server's TokenReview.
    pub fn set_token_reviewer(&self, client: kube::Client) {
        let _ = self.reviewer.set(client);
    }

    /// What the API server says of the token (kubelet's webhook authentication).
    async fn review(&self, token: &str) -> Review {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let key = crate::short_hash(token.as_bytes());
        if let Some((review, at)) = self
            .reviewed
            .lock()
            .expect("review cache")
            .get(&key)
            .cloned()
        {
            let ttl = if review == Review::Refused {
                REVIEW_TTL.1
            } else {
                REVIEW_TTL.0
            };
            if at.elapsed() < ttl {
                return review;
            }
        }
        let Some(client) = self.reviewer.get().cloned() else {
            return Review::Refused;
        };
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(client);
        let review = match api
            .create(&kube::api::PostParams::default(), &request)
            .await
        {
            Ok(r) => match r.status {
                Some(s) if s.authenticated == Some(true) => {
                    let user = s.user.unwrap_or_default();
                    let admin = user.groups.iter().flatten().any(|g| g == "system:masters");
                    if admin {
                        Review::Admin
                    } else {
                        Review::User(user.username.unwrap_or_default())
                    }
                }
                _ => Review::Refused,
            },
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "TokenReview");
                return Review::Refused;
            }
        };
        self.reviewed
            .lock()
            .expect("review cache")
            .insert(key, (review.clone(), std::time::Instant::now()));
        review
    }

    /// `containerLogs` / `pods/log`.
    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        q: &Query,
    ) -> Response<Body> {
        let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
        let since = match (q.get("sinceTime"), num("sinceSeconds")) {
            (Some(t), _) => match t.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t),
                Err(_) => {
                    return status_error(
                        400,
                        "BadRequest",
                        &format!("sinceTime: invalid value {t:?}"),
                    )
                }
            },
            (None, Some(s)) if s > 0 => {
                Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s))
            }
            _ => None,
        };
        let options = logs::LogOptions {
            follow: q.flag(&["follow"]),
            previous: q.flag(&["previous"]),
            timestamps: q.flag(&["timestamps"]),
            tail_lines: num("tailLines").filter(|n| *n >= 0).map(|n| n as usize),
            since,
            limit_bytes: num("limitBytes").filter(|n| *n > 0).map(|n| n as u64),
        };
        match logs::stream(self.node.clone(), namespace, pod, container, options).await {
            Ok(rx) => {
                let body = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
                });
                Response::builder()
                    .status(200)
                    .header("Content-Type", "text/plain")
                    .body(StreamBody::new(body).boxed_unsync())
                    .expect("valid response")
            }
            Err(e) => status_error(e.http_code(), reason(e.http_code()), &e.to_string()),
        }
    }

    /// `exec` / `attach`: upgrades the request and runs the session on the upgraded connection.
    /// Sets the gauges of running pods and containers from the workers' statuses.
    fn count_running(&self) {
        let m = &crate::metrics::KUBELET;
        let (mut pods, mut states) = (0, std::collections::BTreeMap::new());
        for state in ["running", "exited", "created", "unknown"] {
            states.insert(state, 0i64);
        }
        for reported in self.node.pods.lock().expect("pod map lock").values() {
            let statuses = reported.status.container_statuses.iter().flatten();
            let mut any = false;
            for s in statuses {
                let state = match s.state.as_ref() {
                    Some(st) if st.running.is_some() => "running",
                    Some(st) if st.terminated.is_some() => "exited",
                    Some(st) if st.waiting.is_some() => "created",
                    _ => "unknown",
                };
                any |= state == "running";
                *states.entry(state).or_default() += 1;
            }
            pods += i64::from(any);
        }
        m.running_pods.set(pods);
        for (state, n) in states {
            m.running_containers.with_label_values(&[state]).set(n);
        }
    }

    /// The node's CPU and memory use over the last hour.
    pub fn node_history(&self) -> Vec<crate::stats::Usage> {
        self.node.stats.history()
    }

    /// The Summary API's answer (it reads many files: off the async threads).
    pub async fn summary(&self) -> summary::Summary {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || summary::summary(&node))
            .await
            .expect("summary task")
    }

    pub fn remote_command(
        &self,
        req: Request<Incoming>,
        exec: ExecRequest,
        attach: bool,
    ) -> Response<Body> {
        let up = match streams::negotiate(
            req.headers(),
            &remotecommand::SPDY_PROTOCOLS,
            &remotecommand::WEBSOCKET_PROTOCOLS,
        ) {
            Ok(up) => up,
            Err(e) => return status_error(400, "BadRequest", &e),
        };
        let response = streams::switching_protocols(&up);
        let node = self.node.clone();
        tokio::spawn(async move {
            let Ok(io) = hyper::upgrade::on(req).await else {
                return;
            };
            match up.transport {
                Transport::Spdy => {
                    remotecommand::serve_spdy(node, TokioIo::new(io), exec, attach).await
                }
                Transport::WebSocket { .. } => {
                    let ws = streams::websocket(io).await;
                    let v5 = up.protocol.starts_with("v5.");
                    remotecommand::serve_websocket(node, ws, exec, attach, v5).await
                }
            }
        });
        response
    }

    /// `portForward` / `pods/portforward`.
    pub fn port_forward(
        &self,
        req: Request<Incoming>,
        namespace: &str,
        pod: &str,
    ) -> Response<Body> {
        let found = self.node.find_pod(namespace, pod).map(|(uid, _)| uid);
        let Some(uid) = found else {
            return status_error(404, "NotFound", &format!("pod {namespace}/{pod} not found"));
        };
        let target = portforward::Target {
            pod: format!("{namespace}/{pod}"),
            netns: self.node.runtime.shim(&uid).ns_dir().join("net"),
            uid,
        };
        let up = match streams::negotiate(
            req.headers(),
            &portforward::SPDY_PROTOCOLS,
            &portforward::WEBSOCKET_PROTOCOLS,
        ) {
            Ok(up) => up,
            Err(e) => return status_error(400, "BadRequest", &e),
        };
        let q = Query::parse(req.uri().query());
        let ports: Vec<u16> = q
            .all("port")
            .iter()
            .chain(q.all("ports").iter())
            .flat_map(|p| {
                p.split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect::<Vec<u16>>()
            })
            .collect();
        let tunnelled = up.protocol.starts_with("SPDY/3.1");
        if matches!(up.transport, Transport::WebSocket { .. }) && !tunnelled && ports.is_empty() {
            return status_error(400, "BadRequest", "query parameter \"port\" is required");
        }
        let response = streams::switching_protocols(&up);
        tokio::spawn(async move {
            let Ok(io) = hyper::upgrade::on(req).await else {
                return;
            };
            match up.transport {
                Transport::Spdy => portforward::serve(TokioIo::new(io), target).await,
                Transport::WebSocket { .. } if tunnelled => {
                    let ws = streams::websocket(io).await;
                    portforward::serve(streams::websocket_bytes(ws), target).await
                }
                Transport::WebSocket { .. } => {
                    let ws = streams::websocket(io).await;
                    portforward::serve_websocket(ws, target, ports).await
                }
            }
        });
        response
    }

    /// The kubelet API's routes.
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let q = Query::parse(req.uri().query());
        let exec_request = |ns: &str, pod: &str, container: &str, q: &Query| ExecRequest {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
            command: q.all("command"),
            stdin: q.flag(&["input", "stdin"]),
            stdout: q.flag(&["output", "stdout"]),
            stderr: q.flag(&["error", "stderr"]),
            tty: q.flag(&["tty"]),
        };
        match (req.method(), p.as_slice()) {
            (&Method::GET, ["healthz"]) => full(200, "text/plain", "ok"),
            (&Method::GET, ["pods"]) => {
                let items: Vec<_> = self
                    .node
                    .pods
                    .lock()
                    .expect("pod map lock")
                    .values()
                    .map(crate::node::Reported::to_pod)
                    .collect();
                let list =
                    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
                full(200, "application/json", list.to_string())
            }
            (&Method::GET, ["stats", "summary"]) => {
                let summary = self.summary().await;
                full(
                    200,
                    "application/json",
                    serde_json::to_vec(&summary).expect("serialise summary"),
                )
            }
            (&Method::GET, ["metrics"]) => {
                self.count_running();
                full(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::KUBELET.text(),
                )
            }
            (&Method::GET, ["metrics", "resource"]) => {
                let node = self.node.clone();
                let text = tokio::task::spawn_blocking(move || summary::resource_metrics(&node))
                    .await
                    .expect("resource metrics task");
                full(200, "text/plain; version=0.0.4; charset=utf-8", text)
            }
            (&Method::GET, ["containerLogs", ns, pod, container]) => {
                self.logs(ns, pod, container, &q).await
            }
            (_, [verb @ ("exec" | "attach"), ns, pod, container])
            | (_, [verb @ ("exec" | "attach"), ns, pod, _, container]) => {
                let r = exec_request(ns, pod, container, &q);
                let attach = *verb == "attach";
                if !attach && r.command.is_empty() {
                    return status_error(400, "BadRequest", "you must specify at least 1 command");
                }
                self.remote_command(req, r, attach)
            }
            (_, ["portForward", ns, pod]) | (_, ["portForward", ns, pod, _]) => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                self.port_forward(req, &ns, &pod)
            }
            _ => status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        }
    }
}

/// TLS for the kubelet API: this node's serving certificate, and client certificates required
/// and checked against `client_ca`.
pub fn acceptor(
    cert: &X509,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    client_ca: &[X509],
) -> anyhow::Result<SslAcceptor> {
    // Client certificates are asked for, not required: bearer tokens (checked by TokenReview)
    // authenticate too, as with kubelet.
    crate::https::acceptor(cert, key, client_ca, false)
}

pub async fn serve(listener: TcpListener, acceptor: SslAcceptor, kubelet: Kubelet) {
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "kubelet API serving");
    crate::https::serve("kubelet", listener, acceptor, move |req, has_cert| {
        let kubelet = kubelet.clone();
        async move {
            if !has_cert {
                let token = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(|t| t.trim().to_owned());
                let review = match token {
                    Some(t) => kubelet.review(&t).await,
                    None => Review::Refused,
                };
                match review {
                    Review::Admin => {}
                    // kubelet would ask the API server (SubjectAccessReview) what the user may
                    // do; nodelet has no authorization to ask, so only `system:masters` is
                    // served, never a service account, whose token any pod may carry.
                    Review::User(user) => {
                        let message = format!(
                            "Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)"
                        );
                        return status_error(403, "Forbidden", &message);
                    }
                    Review::Refused => return status_error(401, "Unauthorized", "Unauthorized"),
                }
            }
            let method = req.method().as_str().to_owned();
            let path = req
                .uri()
                .path()
                .split('/')
                .find(|s| !s.is_empty())
                .unwrap_or("")
                .to_owned();
            let long_running = matches!(path.as_str(), "exec" | "attach" | "portForward" | "run")
                || (path == "containerLogs" && Query::parse(req.uri().query()).flag(&["follow"]));
            let started = std::time::Instant::now();
            let response = kubelet.handle(req).await;
            // kubelet's path label: the first segment of the known endpoints, else "other".
            let known = [
                "pods",
                "stats",
                "metrics",
                "containerLogs",
                "exec",
                "attach",
                "portForward",
                "healthz",
                "run",
            ];
            let path = if known.contains(&path.as_str()) {
                path.as_str()
            } else {
                "other"
            };
            let labels = [
                if long_running { "true" } else { "false" },
                &method,
                path,
                "readwrite",
            ];
            let m = &crate::metrics::KUBELET;
            m.http_requests.with_label_values(&labels).inc();
            m.http_duration
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            response
        }
    })
    .await
}
