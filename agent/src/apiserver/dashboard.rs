//! The dashboard: a small web application the API serves itself, in two places.
//!
//! - Through `kubectl proxy`, at the URL the Kubernetes notes give:
//!   `/api/v1/namespaces/kubernetes-dashboard/services/https:kubernetes-dashboard:/proxy/`.
//!   The request arrives with kubectl's credentials, so the page acts as kubectl's user.
//! - Directly on the API's address, at `/dashboard/` (a browser asking for `/` is sent there),
//!   where the page asks for a bearer token (a ServiceAccount's, as the real dashboard does) and
//!   acts with that token's rights.
//!
//! Below either base, `k8s/<path>` is this API's own `/<path>` (authenticated again, so the page
//! has exactly its caller's rights), `exec/<ns>/<pod>` is a pod's `exec` (kubectl proxy refuses
//! paths that look like `pods/.../exec`, so the shell has a name of its own), `create` makes the
//! objects of a YAML text, and `history` is the node's CPU and memory over the last hour. The
//! page's own files are compiled in; the terminal emulator (xterm.js) is installed from npm at
//! build time and read from the assets directory.

use std::path::{Path, PathBuf};

use hyper::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::resource::Resource;
use super::store::Store;
use crate::https::Body;

pub const NAMESPACE: &str = "kubernetes-dashboard";
pub const SERVICE: &str = "kubernetes-dashboard";
/// Where the page is served directly.
pub const DIRECT: &str = "/dashboard/";

const INDEX: &str = include_str!("../../../dashboard/index.html");
const APP_JS: &str = include_str!("../../../dashboard/app.js");
const APP_CSS: &str = include_str!("../../../dashboard/app.css");

/// The files the terminal needs, as npm installs them, under the assets directory.
const TERMINAL_FILES: [(&str, &str); 3] = [
    ("xterm.js", "application/javascript"),
    ("xterm.css", "text/css"),
    ("addon-fit.js", "application/javascript"),
];

/// Where the page is, relative to one of its bases.
pub enum Part {
    Asset(Response<Body>),
    /// This API's own path (with the request's query).
    Api(String),
    /// A pod's exec.
    Exec {
        namespace: String,
        pod: String,
    },
    Create,
    History,
}

/// What a request below a base asks for.
pub fn part(rest: &str, assets: &Path) -> Result<Part, ApiError> {
    let page = |kind: &str, text: &'static str| {
        let mut r = crate::https::full(200, kind, text.as_bytes().to_vec());
        secure(&mut r);
        Ok(Part::Asset(r))
    };
    match rest {
        "" | "index.html" => page("text/html; charset=utf-8", INDEX),
        "app.js" => page("application/javascript", APP_JS),
        "app.css" => page("text/css", APP_CSS),
        "create" => Ok(Part::Create),
        "history" => Ok(Part::History),
        _ => {
            if let Some(path) = rest.strip_prefix("k8s/") {
                return Ok(Part::Api(format!("/{path}")));
            }
            if let Some(at) = rest.strip_prefix("exec/") {
                if let Some((namespace, pod)) = at.split_once('/') {
                    return Ok(Part::Exec {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                    });
                }
            }
            if let Some((_, kind)) = TERMINAL_FILES.iter().find(|(f, _)| *f == rest) {
                return terminal_file(assets, rest, kind).map(Part::Asset);
            }
            Err(ApiError::no_route())
        }
    }
}

fn terminal_file(assets: &Path, name: &str, kind: &str) -> Result<Response<Body>, ApiError> {
    match std::fs::read(assets.join(name)) {
        Ok(bytes) => {
            let mut r = crate::https::full(200, kind, bytes);
            secure(&mut r);
            Ok(r)
        }
        Err(e) => Err(ApiError::service_unavailable(format!(
            "the dashboard's terminal ({name}) is not installed in {}: {e} (`make dashboard` \
             installs it from npm)",
            assets.display()
        ))),
    }
}

/// The page loads nothing from elsewhere and runs no inline script.
fn secure(r: &mut Response<Body>) {
    use hyper::header::HeaderValue;
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
}

/// The part of a `services/proxy` path below the dashboard Service, when `segs` (the path cut
/// at `/`) asks for it: `Some(Ok(n))` when the proxied path starts after `n` segments,
/// `Some(Err)` for another Service (nothing else is proxied here), `None` for other paths.
pub fn proxied(segs: &[&str]) -> Option<Result<usize, ApiError>> {
    let ["api", "v1", "namespaces", ns, "services", service, "proxy", ..] = segs else {
        return None;
    };
    // kube-apiserver's `[scheme:]name[:port]`.
    let service = service.replace("%3A", ":").replace("%3a", ":");
    let mut parts = service.split(':').collect::<Vec<_>>();
    if matches!(parts.first(), Some(&("http" | "https"))) && parts.len() > 1 {
        parts.remove(0);
    }
    let name = parts.first().copied().unwrap_or_default();
    let port = parts.get(1).copied().unwrap_or_default();
    if *ns == NAMESPACE && name == SERVICE && matches!(port, "" | "https" | "443") {
        return Some(Ok(7));
    }
    Some(Err(ApiError::service_unavailable(format!(
        "no endpoints available for service \"{name}\": nodelet's built-in API proxies only \
         {NAMESPACE}/{SERVICE}, its own dashboard"
    ))))
}

/// The directory holding the terminal's files: the configured one, else the first of the
/// places a build (`target/dashboard` beside the binary's directory) or a package installs
/// them.
pub fn assets(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("dashboard")));
    let candidates: Vec<PathBuf> = beside
        .into_iter()
        .chain(
            [
                "/usr/share/nodelet/dashboard",
                "/usr/local/share/nodelet/dashboard",
            ]
            .map(PathBuf::from),
        )
        .collect();
    let found = candidates
        .iter()
        .find(|p| p.join(TERMINAL_FILES[0].0).is_file());
    found.unwrap_or(&candidates[0]).clone()
}

/// The dashboard's namespace, made with a new store (an operator may delete it; it is not
/// made again).
pub fn seed(store: &Store) -> Result<(), ApiError> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    super::handlers::create(
        store,
        Resource::Namespaces,
        None,
        ns,
        super::objects::FieldValidation::Strict,
    )
    .map(drop)
}

/// The dashboard's Service, while its namespace is there. Its address is where this API
/// listens for pods, its target port the API's: the page is served there, at `/dashboard/`.
pub fn ensure(store: &Store, at: std::net::SocketAddr) {
    let active = store
        .get(Resource::Namespaces, "", NAMESPACE)
        .is_some_and(|ns| ns["metadata"]["deletionTimestamp"].is_null());
    if !active {
        return;
    }
    let ip = at.ip().to_string();
    let family = if at.is_ipv4() { "IPv4" } else { "IPv6" };
    let spec = json!({
        "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
        "ipFamilies": [family], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": at.port()}],
        "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
    });
    super::controllers::keep_service(
        store,
        NAMESPACE,
        SERVICE,
        json!({"k8s-app": "kubernetes-dashboard"}),
        spec,
    );
}

/// The objects of a YAML (or JSON) text: every document, and the items of a `kind: List`.
pub fn documents(text: &[u8]) -> Result<Vec<Value>, ApiError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_slice(text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| ApiError::bad_request(format!("document {}: {e}", i + 1)))?;
        match v {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => out
                .extend(
                    o.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ),
            Value::Object(_) => out.push(v),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "document {}: not an object",
                    i + 1
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("no objects in the text".to_owned()));
    }
    Ok(out)
}

/// The resource an object's `apiVersion` and `kind` name.
pub fn resource_of(obj: &Value) -> Result<Resource, ApiError> {
    let (version, kind) = (
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    );
    Resource::ALL
        .into_iter()
        .find(|r| r.api_version() == version && r.kind() == kind)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no kind \"{kind}\" is registered for version \"{version}\" here"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_service_is_proxied_under_every_spelling() {
        let segs = |s: &str| -> Vec<String> { s.split('/').map(str::to_owned).collect() };
        for svc in [
            "https:kubernetes-dashboard:",
            "kubernetes-dashboard",
            "https:kubernetes-dashboard:443",
            "kubernetes-dashboard:https",
        ] {
            let p = segs(&format!(
                "api/v1/namespaces/kubernetes-dashboard/services/{svc}/proxy/app.js"
            ));
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            assert!(matches!(proxied(&p), Some(Ok(7))), "{svc}");
        }
        let other = [
            "api",
            "v1",
            "namespaces",
            "default",
            "services",
            "web",
            "proxy",
        ];
        let e = proxied(&other).unwrap().unwrap_err();
        assert_eq!(e.code, 503);
        assert!(e.message.contains("\"web\""), "{}", e.message);
        assert!(proxied(&["api", "v1", "namespaces", "default", "pods"]).is_none());
    }

    #[test]
    fn documents_are_split_and_lists_opened() {
        let text = b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\nkind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n";
        let docs = documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(resource_of(&docs[1]).unwrap(), Resource::ConfigMaps);
        assert!(documents(b"").is_err());
        assert!(documents(b"- 1\n")
            .unwrap_err()
            .message
            .contains("document 1"));
        let e = resource_of(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})).unwrap_err();
        assert!(e.message.contains("Deployment"), "{}", e.message);
    }
}
