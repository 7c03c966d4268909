//! HTTPS for the built-in API: TLS with client-certificate authentication (or the bearer token),
//! URL routing to resources, content negotiation (JSON, Tables, YAML and protobuf bodies) and
//! `Status` errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use jiff::Timestamp;
use openssl::ssl::SslAcceptor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::debug;

use super::dashboard;
use super::discovery;
use super::error::ApiError;
use super::handlers::{self, DeleteOptions, Selectors};
use super::metrics;
use super::objects::FieldValidation;
use super::patch::PatchType;
use super::pki::Pki;
use super::resource::Resource;
use super::serviceaccounts::ISSUER;
use super::store::{Object, Store};
use super::table;
use super::watch::{self, Render, WatchRequest};

pub use crate::https::Body;

/// kube-apiserver's limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request body of at most `MAX_BODY`. A longer one gets 413, and the rest of it is read and
/// dropped in the background (up to 256 MiB or 30 s): closing a connection with unread data
/// makes the kernel reset it, and the client would see the reset, not the 413.
async fn read_body(mut body: hyper::body::Incoming) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY {
            tokio::spawn(async move {
                let drain = async {
                    let mut left: usize = 256 * 1024 * 1024;
                    while let Some(Ok(frame)) = body.frame().await {
                        let n = frame.data_ref().map_or(0, |d| d.len());
                        left = left.saturating_sub(n);
                        if left == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), drain).await;
            });
            return Err(ApiError::too_large());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}
const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

pub fn acceptor(pki: &Pki) -> anyhow::Result<SslAcceptor> {
    // A request without a client certificate may still carry the bearer token.
    crate::https::acceptor(
        &pki.server_cert,
        &pki.server_key,
        std::slice::from_ref(&pki.ca),
        false,
    )
}

pub async fn serve(listener: TcpListener, acceptor: SslAcceptor, server: Arc<Server>) {
    crate::https::serve("api", listener, acceptor, move |req, has_cert| {
        let server = server.clone();
        async move { server.handle(req, has_cert).await }
    })
    .await
}

pub struct Server {
    store: Arc<Store>,
    token: String,
    tokens: super::serviceaccounts::Tokens,
    address: String,
    node_name: String,
    kubelet: Option<crate::kubelet::Kubelet>,
    /// The dashboard's terminal files, when the dashboard is served.
    dashboard: Option<std::path::PathBuf>,
}

/// Who a request is from.
enum Caller {
    Admin,
    Account(super::serviceaccounts::User),
}

/// What a service account may do, the built-in API having no RBAC: discovery (answered before
/// this), and reading (get, list, watch, and `pods/log`) what is in its own namespace, Secrets
/// excepted. Nothing else: no writes, no exec or attach, nothing cluster-wide. That keeps a
/// pod's automounted token from being a way to run a privileged pod on the node.
fn authorize(
    user: &super::serviceaccounts::User,
    method: &Method,
    query: &Query,
    t: &Target,
) -> Result<(), ApiError> {
    let verb = match (method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if query.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => "deletecollection",
    };
    let resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", t.resource.plural()),
        None => t.resource.plural().to_owned(),
    };
    let own = user
        .name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split(':').next());
    let reads = matches!(verb, "get" | "list" | "watch");
    let readable_sub = matches!(t.sub.as_deref(), None | Some("status") | Some("log"));
    let allowed = reads
        && readable_sub
        && t.resource != Resource::Secrets
        && t.resource.namespaced()
        && t.namespace.is_some()
        && t.namespace.as_deref() == own;
    if allowed {
        return Ok(());
    }
    let group = t
        .resource
        .api_version()
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    Err(forbidden(
        user,
        verb,
        &resource,
        group,
        t.namespace.as_deref(),
    ))
}

/// kube-apiserver's RBAC refusal (`pods is forbidden: User "..." cannot list resource "pods"
/// in API group "" in the namespace "default"`).
fn forbidden(
    user: &super::serviceaccounts::User,
    verb: &str,
    resource: &str,
    group: &str,
    namespace: Option<&str>,
) -> ApiError {
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let base = resource.split('/').next().unwrap_or(resource);
    ApiError::forbidden_plain(
        base,
        &format!(
            "User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}",
            user.name
        ),
    )
}

/// What a URL names under `/api/v1` or `/apis/<group>/<version>`.
#[derive(Debug, PartialEq)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{key}: invalid value {v:?}: not an integer"))
                })
            })
            .transpose()
    }
}

/// The parts of a request the handlers need.
struct Call {
    method: Method,
    query: Query,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl Call {
    fn table(&self) -> bool {
        self.accept.split(',').any(|p| p.contains("as=Table"))
    }

    /// YAML asked for before JSON (kube-apiserver's `application/yaml` serializer).
    fn yaml(&self) -> bool {
        self.accept
            .split(',')
            .map(|p| p.split(';').next().unwrap_or_default().trim())
            .find(|t| matches!(*t, "application/yaml" | "application/json" | "*/*"))
            == Some("application/yaml")
    }

    fn validation(&self) -> Result<FieldValidation, ApiError> {
        FieldValidation::parse(self.query.get("fieldValidation"))
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    /// The body as JSON, whatever it was sent as.
    fn json_body(&self) -> Result<Value, ApiError> {
        let media = self
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        match media {
            "application/json" | "" => serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(format!("error decoding request body as JSON: {e}"))
            }),
            "application/yaml" | "application/x-yaml" | "text/yaml" => {
                serde_yaml::from_slice(&self.body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding request body as YAML: {e}"))
                })
            }
            "application/vnd.kubernetes.protobuf" => super::protobuf::decode(&self.body),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

fn respond(code: u16, content_type: &str, body: Vec<u8>, warnings: &[String]) -> Response<Body> {
    let mut r = crate::https::full(code, content_type, body);
    for w in warnings {
        let value = format!("299 - {w:?}")
            .parse()
            .expect("a quoted warning is a valid header");
        r.headers_mut().append("Warning", value);
    }
    r
}

/// kube-apiserver's request labels: verb (`LIST`, `WATCH`, `GET`, `POST`, ..., `CONNECT` for
/// streams), group, version, resource, subresource, scope and component.
fn request_labels(method: &Method, path: &str, query: Option<&str>) -> [String; 7] {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            let verb = method.as_str().to_owned();
            return [
                verb,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "apiserver".into(),
            ];
        }
    };
    let (scope, rest) = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => ("namespace", more),
        _ => ("cluster", rest),
    };
    let resource = rest.first().copied().unwrap_or_default();
    let name = rest.get(1).copied();
    let sub = rest.get(2).copied().unwrap_or_default();
    let scope = if name.is_some() { "resource" } else { scope };
    let watch = Query::parse(query).flag("watch");
    let verb = match (method, name, sub) {
        (_, _, "exec" | "attach" | "portforward" | "proxy") => "CONNECT",
        (&Method::GET, _, _) if watch => "WATCH",
        (&Method::GET, None, _) => "LIST",
        (m, _, _) => m.as_str(),
    };
    [verb, group, version, resource, sub, scope, "apiserver"].map(str::to_owned)
}

const SERVICES_READ_ONLY: &str = "nodelet's built-in API keeps only its own Services (there is \
                                  no service proxy here to take a Service's traffic to its pods)";

/// A browser's WebSocket cannot send headers: kube-apiserver takes its bearer token from the
/// `base64url.bearer.authorization.k8s.io.<token>` subprotocol instead.
fn websocket_bearer(headers: &hyper::HeaderMap) -> Option<String> {
    use base64::Engine;
    let offered = headers.get_all("sec-websocket-protocol");
    let encoded = offered
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("base64url.bearer.authorization.k8s.io.")
        })?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()?;
    String::from_utf8(token).ok()
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = crate::https::full(302, "text/plain; charset=utf-8", Vec::new());
    if let Ok(v) = hyper::header::HeaderValue::from_str(to) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// The same request for another path of this API (its query kept).
fn with_path(req: Request<Incoming>, path: &str) -> Result<Request<Incoming>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let uri = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.uri = uri
        .parse()
        .map_err(|_| ApiError::bad_request(format!("not a path: {path:?}")))?;
    Ok(Request::from_parts(parts, body))
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(value).expect("serialise"),
        &[],
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

impl Server {
    pub fn new(
        store: Arc<Store>,
        token: String,
        tokens: super::serviceaccounts::Tokens,
        address: String,
        node_name: String,
        kubelet: Option<crate::kubelet::Kubelet>,
        dashboard: Option<std::path::PathBuf>,
    ) -> Server {
        Server {
            store,
            token,
            tokens,
            address,
            node_name,
            kubelet,
            dashboard,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, has_cert: bool) -> Response<Body> {
        let started = Instant::now();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let response = match self.route(req, has_cert).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        debug!(%method, %uri, status = response.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
        let labels = request_labels(&method, uri.path(), uri.query());
        let m = &crate::metrics::API_SERVER;
        let code = response.status().as_u16().to_string();
        let with_code: Vec<&str> = labels
            .iter()
            .map(String::as_str)
            .chain([code.as_str()])
            .collect();
        m.requests.with_label_values(&with_code).inc();
        // Watches and streams last as long as the client keeps them: kube-apiserver leaves
        // them out of the latency histogram too.
        if !matches!(labels[0].as_str(), "WATCH" | "CONNECT") {
            m.duration
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        response
    }

    /// Who calls: a client certificate of the API's CA or the admin token (everything is
    /// allowed), or a service account token (see `authorize`).
    fn caller(&self, req: &Request<Incoming>, has_cert: bool) -> Option<Caller> {
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_owned)
            .or_else(|| websocket_bearer(req.headers()));
        let bearer = bearer.as_deref();
        if has_cert || bearer == Some(self.token.as_str()) {
            return Some(Caller::Admin);
        }
        let user = self.tokens.authenticate(&self.store, bearer?, &[ISSUER])?;
        Some(Caller::Account(user))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        has_cert: bool,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(assets) = &self.dashboard {
            let raw = req.uri().path();
            let html = req
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if (raw == "/" && html) || raw == dashboard::DIRECT.trim_end_matches('/') {
                return Ok(redirect(dashboard::DIRECT));
            }
            if let Some(rest) = raw.strip_prefix(dashboard::DIRECT) {
                let rest = rest.to_owned();
                return self.dashboard(req, has_cert, &rest, assets).await;
            }
        }
        self.api(req, has_cert, true).await
    }

    /// The API proper. `proxy`: whether the dashboard Service's proxy may be entered; not from
    /// inside the dashboard, so a path can enter the dashboard once at most (a nested path
    /// would otherwise recurse as deep as the URL is long, unauthenticated).
    async fn api(
        &self,
        req: Request<Incoming>,
        has_cert: bool,
        proxy: bool,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
            return Ok(respond(
                200,
                "text/plain; charset=utf-8",
                b"ok".to_vec(),
                &[],
            ));
        }
        let Some(caller) = self.caller(&req, has_cert) else {
            return Err(ApiError::unauthorized());
        };
        if req.method() == Method::GET && path == "/metrics" {
            if let Caller::Account(user) = &caller {
                return Err(ApiError::forbidden_path(&user.name, "/metrics"));
            }
            return Ok(respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::API_SERVER.text().into_bytes(),
                &[],
            ));
        }
        // Service account issuer discovery: for every authenticated caller, service accounts
        // included (kube-apiserver's `system:service-account-issuer-discovery`).
        if req.method() == Method::GET {
            let doc = match path.as_str() {
                "/.well-known/openid-configuration" => {
                    Some(("application/json", self.tokens.openid_configuration()))
                }
                "/openid/v1/jwks" => Some(("application/jwk-set+json", self.tokens.jwks())),
                _ => None,
            };
            if let Some((kind, doc)) = doc {
                return Ok(respond(200, kind, doc.to_string().into_bytes(), &[]));
            }
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (accept, content_type) = (header("accept"), header("content-type"));
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        if let Some(proxied) = dashboard::proxied(&segs) {
            proxied?;
            if !proxy {
                return Err(ApiError::no_route());
            }
            if let Caller::Account(user) = &caller {
                return Err(forbidden(user, "get", "services/proxy", "", Some(segs[3])));
            }
            let Some(assets) = &self.dashboard else {
                return Err(ApiError::service_unavailable(
                    "the dashboard is turned off in this node's configuration (apiServer.dashboard)",
                ));
            };
            // `.../proxy/<rest>`; the bare `.../proxy` is sent to `.../proxy/`, as pages link
            // relative to it.
            let raw = req.uri().path().to_owned();
            let mut parts = raw.splitn(9, '/');
            let base: Vec<&str> = parts.by_ref().take(8).collect();
            return match parts.next() {
                Some(rest) => self.dashboard(req, has_cert, rest, assets).await,
                None => Ok(redirect(&format!("{}/", base.join("/")))),
            };
        }
        if method == Method::GET {
            if let Some(doc) = self.discovery(&segs, &accept) {
                return Ok(doc);
            }
        }
        if method == Method::POST && segs == ["apis", "authentication.k8s.io", "v1", "tokenreviews"]
        {
            if let Caller::Account(user) = &caller {
                return Err(forbidden(
                    user,
                    "create",
                    "tokenreviews",
                    "authentication.k8s.io",
                    None,
                ));
            }
            return self.token_review(req).await;
        }
        if let ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] = segs.as_slice() {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            return self.metrics(&caller, rest, &query).await;
        }
        let (group_version, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => ("v1", rest),
            ["apis", group, version, rest @ ..] => {
                let gv = format!("{group}/{version}");
                let gv = if gv == super::resource::COORDINATION {
                    super::resource::COORDINATION
                } else {
                    return Err(ApiError::no_route());
                };
                (gv, rest)
            }
            _ => return Err(ApiError::no_route()),
        };
        let target = parse_target(group_version, rest).ok_or_else(ApiError::no_route)?;
        if let Caller::Account(user) = &caller {
            authorize(user, &method, &query, &target)?;
        }
        if let (Resource::Pods, Some(sub @ ("log" | "exec" | "attach" | "portforward"))) =
            (target.resource, target.sub.as_deref())
        {
            let sub = sub.to_owned();
            return self.streaming(req, &target, &sub).await;
        }
        let body = if matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            read_body(req.into_body()).await?
        } else {
            Bytes::new()
        };
        let call = Call {
            method,
            query,
            accept,
            content_type,
            body,
        };
        self.resource(&target, &call)
    }

    /// A request below one of the dashboard's bases (`rest` is the path after it).
    async fn dashboard(
        &self,
        req: Request<Incoming>,
        has_cert: bool,
        rest: &str,
        assets: &std::path::Path,
    ) -> Result<Response<Body>, ApiError> {
        let inner = match dashboard::part(rest, assets)? {
            dashboard::Part::Asset(r) => return Ok(r),
            dashboard::Part::Api(path) => with_path(req, &path)?,
            dashboard::Part::Exec { namespace, pod } => with_path(
                req,
                &format!("/api/v1/namespaces/{namespace}/pods/{pod}/exec"),
            )?,
            dashboard::Part::Create => return self.create_documents(req, has_cert).await,
            dashboard::Part::History => {
                return match self.caller(&req, has_cert) {
                    None => Err(ApiError::unauthorized()),
                    Some(Caller::Account(user)) => {
                        Err(forbidden(&user, "get", "nodes/stats", "", None))
                    }
                    Some(Caller::Admin) => {
                        let points = self.kubelet.as_ref().map(|k| k.node_history());
                        Ok(json_response(
                            200,
                            &json!({"node": self.node_name, "points": points.unwrap_or_default()}),
                        ))
                    }
                };
            }
        };
        Box::pin(self.api(inner, has_cert, false)).await
    }

    /// The dashboard's "create from YAML": each object of the text (documents, `kind: List`
    /// items) created in turn with the caller's rights, in the page's namespace when it names
    /// none. Answers what became of each.
    async fn create_documents(
        &self,
        req: Request<Incoming>,
        has_cert: bool,
    ) -> Result<Response<Body>, ApiError> {
        let caller = self
            .caller(&req, has_cert)
            .ok_or_else(ApiError::unauthorized)?;
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed());
        }
        let query = Query::parse(req.uri().query());
        let default_ns = query.get("namespace").unwrap_or("default").to_owned();
        let text = read_body(req.into_body()).await?;
        let mut results = Vec::new();
        for obj in dashboard::documents(&text)? {
            let (kind, name) = (obj["kind"].clone(), obj["metadata"]["name"].clone());
            let created = dashboard::resource_of(&obj).and_then(|r| {
                let namespace = r.namespaced().then(|| {
                    obj["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(&default_ns)
                        .to_owned()
                });
                let target = Target {
                    resource: r,
                    namespace: namespace.clone(),
                    name: None,
                    sub: None,
                };
                if let Caller::Account(user) = &caller {
                    authorize(user, &Method::POST, &query, &target)?;
                }
                if r == Resource::Services {
                    return Err(ApiError::forbidden_plain("services", SERVICES_READ_ONLY));
                }
                handlers::create(
                    &self.store,
                    r,
                    namespace.as_deref(),
                    obj,
                    FieldValidation::Strict,
                )
            });
            results.push(match created {
                Ok((o, _)) => json!({"kind": kind, "namespace": o["metadata"]["namespace"],
                    "name": o["metadata"]["name"], "created": true}),
                Err(e) => {
                    json!({"kind": kind, "name": name, "created": false, "message": e.message})
                }
            });
        }
        Ok(json_response(200, &json!({"results": results})))
    }

    /// `metrics.k8s.io`: NodeMetrics and PodMetrics from this node's kubelet (`metrics`).
    async fn metrics(
        &self,
        caller: &Caller,
        rest: &[&str],
        query: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let (namespace, plural, name) = match rest {
            ["nodes"] => (None, "nodes", None),
            ["nodes", n] => (None, "nodes", Some(*n)),
            ["pods"] => (None, "pods", None),
            ["namespaces", ns, "pods"] => (Some(*ns), "pods", None),
            ["namespaces", ns, "pods", n] => (Some(*ns), "pods", Some(*n)),
            _ => return Err(ApiError::no_route()),
        };
        if let Caller::Account(user) = caller {
            // A service account reads its own namespace's pods' figures, as it reads the pods.
            let own = user
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split(':').next());
            if plural == "nodes" || namespace.is_none() || namespace != own {
                let verb = if name.is_some() { "get" } else { "list" };
                return Err(forbidden(user, verb, plural, "metrics.k8s.io", namespace));
            }
        }
        let summary = match self.kubelet.as_ref() {
            Some(kubelet) => Some(kubelet.summary().await),
            None => None,
        };
        let items = match (plural, summary) {
            ("nodes", Some(s)) => {
                let node = self.store.get(Resource::Nodes, "", &s.node.node_name);
                metrics::node(&s, node.as_deref()).into_iter().collect()
            }
            ("pods", Some(s)) => metrics::pods(&s, namespace, |ns, n| {
                self.store.get(Resource::Pods, ns, n).map(|o| (*o).clone())
            }),
            _ => Vec::new(),
        };
        let (list_kind, single) = match plural {
            "nodes" => ("NodeMetricsList", "nodemetrics.metrics.k8s.io"),
            _ => ("PodMetricsList", "podmetrics.metrics.k8s.io"),
        };
        let doc = match name {
            Some(n) => items
                .into_iter()
                .find(|i| i["metadata"]["name"] == n)
                .ok_or_else(|| ApiError::not_found(single, n))?,
            None => metrics::list(list_kind, items, query.get("labelSelector"))?,
        };
        Ok(json_response(200, &doc))
    }

    fn discovery(&self, segs: &[&str], accept: &str) -> Option<Response<Body>> {
        let aggregated = discovery::wants_aggregated(accept);
        let doc = match segs {
            ["version"] => discovery::version(),
            ["api"] if aggregated => {
                return Some(respond(
                    200,
                    discovery::AGGREGATED_V2,
                    discovery::aggregated(true).to_string().into_bytes(),
                    &[],
                ))
            }
            ["apis"] if aggregated => {
                return Some(respond(
                    200,
                    discovery::AGGREGATED_V2,
                    discovery::aggregated(false).to_string().into_bytes(),
                    &[],
                ))
            }
            ["api"] => discovery::api_versions(&self.address),
            ["apis"] => discovery::api_group_list(),
            ["api", "v1"] => discovery::resource_list("v1")?,
            ["apis", group, version] => discovery::resource_list(&format!("{group}/{version}"))?,
            ["openapi", "v2"] => {
                let doc = super::openapi::v2();
                let protobuf = accept.contains("application/com.github.proto-openapi.spec.v2");
                let mut r = if protobuf {
                    respond(
                        200,
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                        doc.protobuf.clone(),
                        &[],
                    )
                } else {
                    respond(200, "application/json", doc.json.clone(), &[])
                };
                if let Ok(etag) = hyper::header::HeaderValue::from_str(&format!("\"{}\"", doc.etag))
                {
                    r.headers_mut().insert("etag", etag);
                }
                return Some(r);
            }
            ["openapi", "v3"] => discovery::openapi_root(),
            ["openapi", "v3", rest @ ..] => {
                let doc = super::openapi::document(&rest.join("/"))?;
                // Immutable under its hash, as kube-apiserver marks it.
                let mut r = respond(200, "application/json", doc.json.clone(), &[]);
                r.headers_mut().insert(
                    "cache-control",
                    hyper::header::HeaderValue::from_static("public, immutable"),
                );
                return Some(r);
            }
            _ => return None,
        };
        Some(json_response(200, &doc))
    }

    fn resource(&self, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
        let r = t.resource;
        if r == Resource::Services && call.method != Method::GET {
            return Err(match t.name.as_deref() {
                Some(name) => ApiError::forbidden("services", name, SERVICES_READ_ONLY),
                None => ApiError::forbidden_plain("services", SERVICES_READ_ONLY),
            });
        }
        let ns = t.namespace.as_deref().unwrap_or_default();
        match (&call.method, t.name.as_deref(), t.sub.as_deref()) {
            (&Method::GET, None, None) if call.query.flag("watch") => self.watch(t, call),
            (&Method::GET, None, None) => self.list(t, call),
            (&Method::GET, Some(name), None | Some("status") | Some("ephemeralcontainers"))
                if r == Resource::Pods || t.sub.as_deref() != Some("ephemeralcontainers") =>
            {
                let obj = handlers::get(&self.store, r, ns, name)?;
                Ok(self.object(r, call, &obj, 200, &[]))
            }
            (&Method::POST, None, None) => {
                if r.namespaced() && t.namespace.is_none() {
                    return Err(ApiError::method_not_allowed());
                }
                let body = call.json_body()?;
                if call.dry_run() {
                    let admitted = super::objects::admit_create(
                        r,
                        t.namespace.as_deref(),
                        body,
                        call.validation()?,
                    )?;
                    return Ok(self.object(r, call, &admitted.object, 201, &admitted.warnings));
                }
                let (obj, warnings) = handlers::create(
                    &self.store,
                    r,
                    t.namespace.as_deref(),
                    body,
                    call.validation()?,
                )?;
                Ok(self.object(r, call, &obj, 201, &warnings))
            }
            (&Method::PATCH | &Method::PUT, Some(name), Some("ephemeralcontainers"))
                if r == Resource::Pods =>
            {
                let patch = if call.method == Method::PATCH {
                    let kind = PatchType::from_content_type(&call.content_type)
                        .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
                    Some(kind)
                } else {
                    None
                };
                let obj = handlers::ephemeral_containers(&self.store, ns, name, patch, &call.body)?;
                Ok(self.object(r, call, &obj, 200, &[]))
            }
            (&Method::POST, Some(name), Some("token")) if r == Resource::ServiceAccounts => {
                let answer = self
                    .tokens
                    .request(&self.store, ns, name, &call.json_body()?)?;
                Ok(json_response(201, &answer))
            }
            (&Method::PUT, Some(name), sub @ (None | Some("status"))) => {
                let (obj, warnings) = handlers::update(
                    &self.store,
                    r,
                    ns,
                    name,
                    call.json_body()?,
                    handlers::Write {
                        status: sub.is_some(),
                        validation: call.validation()?,
                    },
                )?;
                Ok(self.object(r, call, &obj, 200, &warnings))
            }
            (&Method::PUT, Some(name), Some("finalize")) if r == Resource::Namespaces => {
                let obj = handlers::finalize_namespace(&self.store, name, call.json_body()?)?;
                Ok(self.object(r, call, &obj, 200, &[]))
            }
            (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
                let kind = PatchType::from_content_type(&call.content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
                let (obj, warnings) = handlers::patch(
                    &self.store,
                    r,
                    ns,
                    name,
                    kind,
                    &call.body,
                    handlers::Write {
                        status: sub.is_some(),
                        validation: call.validation()?,
                    },
                )?;
                Ok(self.object(r, call, &obj, 200, &warnings))
            }
            (&Method::DELETE, Some(name), None) => {
                let options = delete_options(call)?;
                let obj = handlers::delete(&self.store, r, ns, name, &options)?;
                Ok(self.object(r, call, &obj, 200, &[]))
            }
            (&Method::DELETE, None, None) => {
                let selectors = selectors(r, &call.query)?;
                let options = delete_options(call)?;
                let items = handlers::delete_collection(
                    &self.store,
                    r,
                    t.namespace.as_deref(),
                    &selectors,
                    &options,
                )?;
                let rv = self.store.resource_version().to_string();
                Ok(respond(
                    200,
                    "application/json",
                    list_body(r, &items, &rv, None),
                    &[],
                ))
            }
            (_, Some(_), Some(sub @ ("log" | "exec" | "attach" | "portforward")))
                if r == Resource::Pods =>
            {
                Err(ApiError::not_implemented(&format!("pods/{sub}")))
            }
            (_, _, Some(_)) => Err(ApiError::no_route()),
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// TokenReview: whether a bearer token is this API's (what a kubelet asks before serving a
    /// request that carries one).
    async fn token_review(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let body = Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("read request body: {e}")))?
            .to_bytes();
        let review: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("TokenReview: {e}")))?;
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<&str> = review["spec"]["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let audiences = if asked.is_empty() {
            vec![ISSUER]
        } else {
            asked
        };
        let mut status = json!({"authenticated": false});
        if !token.is_empty() && token == self.token {
            status = json!({"authenticated": true, "user": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}});
        } else if let Some(user) = self.tokens.authenticate(&self.store, token, &audiences) {
            status = json!({"authenticated": true, "audiences": audiences,
                "user": {"username": user.name, "uid": user.uid, "groups": user.groups}});
        }
        let answer = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status});
        Ok(json_response(201, &answer))
    }

    /// `pods/log`, `exec`, `attach` and `portforward`: kube-apiserver's checks, then the node's
    /// kubelet API, which for this node's pods is in this process.
    async fn streaming(
        &self,
        req: Request<Incoming>,
        t: &Target,
        sub: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (ns, name) = (
            t.namespace.as_deref().unwrap_or_default(),
            t.name.as_deref().unwrap_or_default(),
        );
        let pod = handlers::get(&self.store, Resource::Pods, ns, name)?;
        let q = crate::kubelet::Query::parse(req.uri().query());
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let Some(kubelet) = self.kubelet.as_ref().filter(|_| node == self.node_name) else {
            return Err(ApiError::not_implemented(&format!(
                "pods/{sub} for pods on node {node:?} (this API reaches only {:?})",
                self.node_name
            )));
        };
        let containers: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let init: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let container = match (q.get("container"), containers.as_slice()) {
            (Some(c), _) if !c.is_empty() => c.to_owned(),
            (_, [only]) => (*only).to_owned(),
            _ if sub == "portforward" => String::new(),
            _ => {
                let init = if init.is_empty() {
                    String::new()
                } else {
                    format!(" or one of the init containers: [{}]", init.join(" "))
                };
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]{init}",
                    containers.join(" ")
                )));
            }
        };
        let ephemeral = pod["spec"]["ephemeralContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == container.as_str());
        let known = containers.contains(&container.as_str())
            || init.contains(&container.as_str())
            || ephemeral;
        if sub != "portforward" && !known {
            return Err(ApiError::bad_request(format!(
                "container {container} is not valid for pod {name}"
            )));
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        match sub {
            "log" => Ok(kubelet.logs(ns, name, &container, &q).await),
            "exec" | "attach" => {
                if matches!(phase, "Succeeded" | "Failed") {
                    return Err(ApiError::bad_request(format!("cannot {sub} into a container in a completed pod; current phase is {phase}")));
                }
                let flag = |k: &str| matches!(q.get(k), Some("true" | "1"));
                let request = crate::kubelet::exec::ExecRequest {
                    namespace: ns.to_owned(),
                    pod: name.to_owned(),
                    container,
                    command: req
                        .uri()
                        .query()
                        .map(|q| {
                            form_urlencoded::parse(q.as_bytes())
                                .filter(|(k, _)| k == "command")
                                .map(|(_, v)| v.into_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                    stdin: flag("stdin"),
                    stdout: q.get("stdout").is_none_or(|v| v == "true" || v == "1"),
                    stderr: q.get("stderr").is_none_or(|v| v == "true" || v == "1"),
                    tty: flag("tty"),
                };
                if sub == "exec" && request.command.is_empty() {
                    return Err(ApiError::bad_request("you must specify at least 1 command"));
                }
                Ok(kubelet.remote_command(req, request, sub == "attach"))
            }
            _ => Ok(kubelet.port_forward(req, ns, name)),
        }
    }

    /// One object as JSON, or as a one-row Table when asked for.
    fn object(
        &self,
        r: Resource,
        call: &Call,
        obj: &Value,
        code: u16,
        warnings: &[String],
    ) -> Response<Body> {
        if call.table() && call.method == Method::GET {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            let t = table::table(r, &[obj], rv, true, Timestamp::now());
            return respond(
                code,
                TABLE_TYPE,
                serde_json::to_vec(&t).expect("serialise"),
                warnings,
            );
        }
        if call.yaml() {
            let text = serde_yaml::to_string(obj).expect("serialise");
            return respond(code, "application/yaml", text.into_bytes(), warnings);
        }
        respond(
            code,
            "application/json",
            serde_json::to_vec(obj).expect("serialise"),
            warnings,
        )
    }

    fn list(&self, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
        let r = t.resource;
        let selectors = selectors(r, &call.query)?;
        let (mut items, rv) = handlers::list(&self.store, r, t.namespace.as_deref(), &selectors);
        // Pages by key: the continue token is the last key returned and the list's version.
        let mut rv = rv.to_string();
        if let Some(token) = call.query.get("continue").filter(|c| !c.is_empty()) {
            let (from_rv, after) = decode_continue(token)?;
            rv = from_rv;
            items.retain(|o| key_of(o) > after);
        }
        let mut next = None;
        if let Some(limit) = call.query.int("limit")?.filter(|l| *l > 0) {
            let limit = limit as usize;
            if items.len() > limit {
                items.truncate(limit);
                next = items.last().map(|o| encode_continue(&rv, &key_of(o)));
            }
        }
        if call.table() {
            let objs: Vec<&Value> = items.iter().map(|o| &**o).collect();
            let mut t = table::table(r, &objs, &rv, true, Timestamp::now());
            match call.query.get("includeObject") {
                Some("Object") => {
                    for (row, obj) in t["rows"].as_array_mut().into_iter().flatten().zip(&items) {
                        row["object"] = (**obj).clone();
                    }
                }
                Some("None") => {
                    for row in t["rows"].as_array_mut().into_iter().flatten() {
                        row.as_object_mut().map(|m| m.remove("object"));
                    }
                }
                _ => {}
            }
            if let Some(c) = &next {
                t["metadata"]["continue"] = json!(c);
            }
            return Ok(respond(
                200,
                TABLE_TYPE,
                serde_json::to_vec(&t).expect("serialise"),
                &[],
            ));
        }
        Ok(respond(
            200,
            "application/json",
            list_body(r, &items, &rv, next),
            &[],
        ))
    }

    fn watch(&self, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
        let r = t.resource;
        let from =
            match call.query.get("resourceVersion") {
                None | Some("") | Some("0") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?),
            };
        let timeout = call
            .query
            .int("timeoutSeconds")?
            .filter(|s| *s > 0)
            .unwrap_or(1800);
        let render = if call.table() {
            Render::Table {
                full: call.query.get("includeObject") == Some("Object"),
            }
        } else {
            Render::Object
        };
        let req = WatchRequest {
            resource: r,
            namespace: t.namespace.clone(),
            selectors: selectors(r, &call.query)?,
            from,
            initial_events_end: call.query.flag("sendInitialEvents"),
            bookmarks: call.query.flag("allowWatchBookmarks"),
            timeout: Duration::from_secs(timeout as u64),
            render,
        };
        let rx = watch::start(self.store.clone(), req)?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        let content_type = if call.table() {
            TABLE_TYPE
        } else {
            "application/json"
        };
        Ok(Response::builder()
            .status(200)
            .header("Content-Type", content_type)
            .header("Cache-Control", "no-cache, private")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("valid response"))
    }
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn encode_continue(rv: &str, key: &str) -> String {
    openssl::base64::encode_block(json!({"rv": rv, "start": key}).to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = openssl::base64::decode_block(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_str().ok_or_else(bad)?.to_owned(),
        v["start"].as_str().ok_or_else(bad)?.to_owned(),
    ))
}

fn selectors(r: Resource, q: &Query) -> Result<Selectors, ApiError> {
    Selectors::parse(r, q.get("labelSelector"), q.get("fieldSelector"))
}

fn delete_options(call: &Call) -> Result<DeleteOptions, ApiError> {
    let mut options: DeleteOptions = if call.body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        let v = call.json_body()?;
        serde_json::from_value(v)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
    };
    if let Some(g) = call.query.int("gracePeriodSeconds")? {
        options.grace_period_seconds = Some(g);
    }
    if let Some(uid) = call.query.get("preconditions.uid") {
        options
            .preconditions
            .get_or_insert_with(Default::default)
            .uid = Some(uid.to_owned());
    }
    Ok(options)
}

/// A list's JSON, written straight from the stored objects (building it as one `Value` first
/// would copy every object: 20 MB for a thousand pods).
fn list_body(r: Resource, items: &[Object], rv: &str, next: Option<String>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct List<'a> {
        kind: String,
        api_version: &'a str,
        metadata: Meta<'a>,
        items: Vec<&'a Value>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta<'a> {
        resource_version: &'a str,
        #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    }
    let list = List {
        kind: format!("{}List", r.kind()),
        api_version: r.api_version(),
        metadata: Meta {
            resource_version: rv,
            next,
        },
        items: items.iter().map(|o| &**o).collect(),
    };
    serde_json::to_vec(&list).expect("serialise")
}

/// `pods`, `pods/NAME[/SUB]`, `namespaces/NS/pods[/NAME[/SUB]]`, `namespaces/NAME[/status|finalize]`.
fn parse_target(group_version: &str, rest: &[&str]) -> Option<Target> {
    let resource = |plural: &str| Resource::from_path(group_version, plural);
    let t = |resource, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if group_version != "v1" || !matches!(*plural, "status" | "finalize") =>
        {
            let r = resource(plural).filter(|r| r.namespaced())?;
            match tail {
                [] => Some(t(r, Some(ns), None, None)),
                [name] => Some(t(r, Some(ns), Some(name), None)),
                [name, sub] => Some(t(r, Some(ns), Some(name), Some(sub))),
                _ => None,
            }
        }
        [plural, tail @ ..] => {
            let r = resource(plural)?;
            if r.namespaced() && !tail.is_empty() {
                return None;
            }
            match tail {
                [] => Some(t(r, None, None, None)),
                [name] => Some(t(r, None, Some(name), None)),
                [name, sub] => Some(t(r, None, Some(name), Some(sub))),
                _ => None,
            }
        }
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_websocket_brings_its_token_as_a_subprotocol() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.YWJjLmRlZi1naGk"
                .parse()
                .unwrap(),
        );
        assert_eq!(websocket_bearer(&h).as_deref(), Some("abc.def-ghi"));
        h.insert(
            "sec-websocket-protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(websocket_bearer(&h), None);
    }

    #[test]
    fn targets() {
        let p = |s: &str| {
            let segs: Vec<&str> = s.split('/').collect();
            parse_target("v1", &segs)
        };
        let t = p("namespaces/default/pods/kubia/status").unwrap();
        assert_eq!(
            (
                t.resource,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            (
                Resource::Pods,
                Some("default"),
                Some("kubia"),
                Some("status")
            )
        );
        let t = p("namespaces/x/status").unwrap();
        assert_eq!(
            (t.resource, t.name.as_deref(), t.sub.as_deref()),
            (Resource::Namespaces, Some("x"), Some("status"))
        );
        let t = p("namespaces/x").unwrap();
        assert_eq!(
            (t.resource, t.name.as_deref()),
            (Resource::Namespaces, Some("x"))
        );
        assert_eq!(p("pods").unwrap().namespace, None);
        assert!(p("pods/x").is_none());
        assert!(p("nodes/n1/status").is_some());
        assert!(p("namespaces/x/nodes").is_none());
        assert!(p("widgets").is_none());
        let lease = parse_target(
            "coordination.k8s.io/v1",
            &["namespaces", "kube-node-lease", "leases", "n1"],
        )
        .unwrap();
        assert_eq!(lease.resource, Resource::Leases);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue("42", "default/kubia");
        assert_eq!(
            decode_continue(&token).unwrap(),
            ("42".into(), "default/kubia".into())
        );
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
    }
}
