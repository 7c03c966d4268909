//! Discovery as kubectl 1.27–1.33 reads it: `/version`, legacy `/api`, `/apis`, `/api/v1`,
//! `/apis/coordination.k8s.io/v1`, aggregated discovery v2 only when the Accept header asks for
//! it, and the OpenAPI v3 index (the documents are `openapi`'s).

use serde_json::{json, Value};

use super::metrics;
use super::resource::{Resource, COORDINATION};

pub const KUBE_VERSION: (&str, &str) = ("1", "33");

pub fn version() -> Value {
    let (major, minor) = KUBE_VERSION;
    json!({
        "major": major, "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-nodelet.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "", "compiler": "rustc", "platform": format!("linux/{}", crate::apiserver::go_arch()),
    })
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn in_group(group_version: &str) -> impl Iterator<Item = Resource> + '_ {
    Resource::ALL
        .into_iter()
        .filter(move |r| r.api_version() == group_version)
}

/// `/api/v1`, `/apis/coordination.k8s.io/v1` or `/apis/metrics.k8s.io/v1beta1`.
pub fn resource_list(group_version: &str) -> Option<Value> {
    if group_version == metrics::GROUP_VERSION {
        let resources: Vec<Value> = metrics::RESOURCES
            .iter()
            .map(|(plural, kind, namespaced)| {
                json!({"name": plural, "singularName": "", "namespaced": namespaced,
                    "kind": kind, "verbs": ["get", "list"]})
            })
            .collect();
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": group_version, "resources": resources}));
    }
    if group_version != "v1" && group_version != COORDINATION {
        return None;
    }
    let mut resources = Vec::new();
    for r in in_group(group_version) {
        let mut entry = json!({
            "name": r.plural(), "singularName": r.kind().to_lowercase(), "namespaced": r.namespaced(),
            "kind": r.kind(), "verbs": VERBS,
        });
        if !r.short_names().is_empty() {
            entry["shortNames"] = json!(r.short_names());
        }
        if matches!(r, Resource::Pods | Resource::Services) {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        for (sub, kind, verbs) in r.subresources() {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural()), "singularName": "", "namespaced": r.namespaced(),
                "kind": kind, "verbs": verbs,
            }));
        }
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

pub fn api_group_list() -> Value {
    let gv = json!({"groupVersion": COORDINATION, "version": "v1"});
    let metrics = json!({"groupVersion": metrics::GROUP_VERSION, "version": "v1beta1"});
    json!({"kind": "APIGroupList", "apiVersion": "v1",
    "groups": [
        {"name": "coordination.k8s.io", "versions": [gv.clone()], "preferredVersion": gv},
        {"name": "metrics.k8s.io", "versions": [metrics.clone()], "preferredVersion": metrics},
    ]})
}

pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// True when the Accept header asks for aggregated discovery v2 (kubectl ≥ 1.30).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// The aggregated document for `/api` (core) or `/apis` (named groups).
pub fn aggregated(core: bool) -> Value {
    let group_version = if core { "v1" } else { COORDINATION };
    let resources: Vec<Value> = in_group(group_version)
        .map(|r| {
            let (group, version) = match r.api_version().split_once('/') {
                Some((g, v)) => (g, v),
                None => ("", "v1"),
            };
            let mut entry = json!({
                "resource": r.plural(),
                "responseKind": {"group": group, "version": version, "kind": r.kind()},
                "scope": if r.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": r.kind().to_lowercase(),
                "verbs": VERBS,
            });
            if !r.short_names().is_empty() {
                entry["shortNames"] = json!(r.short_names());
            }
            if matches!(r, Resource::Pods | Resource::Services) {
                entry["categories"] = json!(["all"]);
            }
            let subs: Vec<Value> = r
                .subresources()
                .iter()
                .map(|(sub, kind, verbs)| json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs}))
                .collect();
            if !subs.is_empty() {
                entry["subresources"] = json!(subs);
            }
            entry
        })
        .collect();
    let mut item = json!({"metadata": {"creationTimestamp": null},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]});
    if core {
        return json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": [item]});
    }
    item["metadata"]["name"] = json!("coordination.k8s.io");
    let metrics: Vec<Value> = metrics::RESOURCES
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"resource": plural,
                "responseKind": {"group": "metrics.k8s.io", "version": "v1beta1", "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": "", "verbs": ["get", "list"]})
        })
        .collect();
    let metrics = json!({"metadata": {"name": "metrics.k8s.io", "creationTimestamp": null},
        "versions": [{"version": "v1beta1", "resources": metrics, "freshness": "Current"}]});
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": [item, metrics]})
}

/// `/openapi/v3`: where each group-version's document is (`openapi`).
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    for (path, _) in super::openapi::PATHS {
        let hash = super::openapi::document(path).map_or("", |d| d.hash.as_str());
        paths.insert(
            path.to_owned(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({ "paths": paths })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_only_when_asked_for_v2() {
        let k132 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let k127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated(k132));
        assert!(!wants_aggregated(k127));
        assert!(!wants_aggregated("application/json"));
    }

    #[test]
    fn resource_lists() {
        let core = resource_list("v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/exec")
                && names.contains(&"namespaces/finalize")
        );
        assert!(!names.contains(&"leases"));
        assert!(resource_list("apps/v1").is_none());
    }
}
