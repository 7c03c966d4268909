//! Mirror pods, as kubelet keeps them: every static pod (from the manifest directory) has a copy
//! in the API, bound to this node, annotated `kubernetes.io/config.mirror: <config hash>`, so
//! `kubectl get pods` shows it with its status and `kubectl logs`/`exec` reach it. The API never
//! runs a mirror pod; deleting one only makes the node create it again; a mirror whose static pod
//! changed or left is deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub const MIRROR: &str = "kubernetes.io/config.mirror";
const HASH: &str = "kubernetes.io/config.hash";
const SOURCE: &str = "kubernetes.io/config.source";

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR).is_some()
}

pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, SOURCE) == Some("file")
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// What to do to bring the API's mirror pods in line with the node's static pods.
#[derive(Debug, PartialEq)]
pub enum Action<'a> {
    /// Create the mirror of this static pod.
    Create(&'a Pod),
    /// Delete this mirror pod (at once, with its uid as precondition).
    Delete(&'a Pod),
    /// Report the static pod's status on its mirror.
    Status { mirror: &'a Pod, of: &'a Pod },
}

/// Compares the node's static pods with the mirror pods the API holds for this node.
pub fn plan<'a>(statics: &[&'a Pod], mirrors: &[&'a Pod]) -> Vec<Action<'a>> {
    let mut actions = Vec::new();
    let mut live: BTreeMap<(String, String), &Pod> = BTreeMap::new();
    for &mirror in mirrors {
        let current = statics.iter().find(|s| {
            key(s) == key(mirror)
                && annotation(s, HASH).is_some()
                && annotation(s, HASH) == annotation(mirror, MIRROR)
        });
        match current {
            Some(_) if mirror.metadata.deletion_timestamp.is_none() => {
                live.insert(key(mirror), mirror);
            }
            // Being deleted (someone asked), outdated or orphaned: finish it; a new one follows.
            _ => actions.push(Action::Delete(mirror)),
        }
    }
    for &pod in statics {
        match live.get(&key(pod)) {
            Some(mirror) => actions.push(Action::Status { mirror, of: pod }),
            // Wait for an old mirror of the same name to be gone first.
            None if !mirrors.iter().any(|m| key(m) == key(pod)) => {
                actions.push(Action::Create(pod))
            }
            None => {}
        }
    }
    actions
}

/// The mirror of a static pod: its name, labels, annotations and spec, owned by the Node.
pub fn mirror_of(pod: &Pod, node: &str, node_uid: Option<&str>) -> Pod {
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(
        MIRROR.into(),
        annotation(pod, HASH).unwrap_or_default().to_owned(),
    );
    annotations.remove("kubernetes.io/config.seen");
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.to_owned(),
                    uid: uid.to_owned(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: pod.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn creates_reports_and_replaces_mirrors() {
        let web = pod("web-n1", &[(SOURCE, "file"), (HASH, "h1")]);
        let db = pod("db-n1", &[(SOURCE, "file"), (HASH, "h2")]);
        let web_mirror = pod("web-n1", &[(MIRROR, "h1")]);
        let db_old = pod("db-n1", &[(MIRROR, "old")]);
        let gone = pod("gone-n1", &[(MIRROR, "h9")]);
        let actions = plan(&[&web, &db], &[&web_mirror, &db_old, &gone]);
        assert_eq!(
            actions,
            vec![
                Action::Delete(&db_old),
                Action::Delete(&gone),
                Action::Status {
                    mirror: &web_mirror,
                    of: &web
                },
            ],
            "db waits for its outdated mirror to go before a new one is made"
        );
        assert_eq!(plan(&[&db], &[]), vec![Action::Create(&db)]);

        let mut deleted = web_mirror.clone();
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(plan(&[&web], &[&deleted]), vec![Action::Delete(&deleted)]);
    }

    #[test]
    fn a_mirror_carries_the_hash_and_the_node() {
        let web = pod(
            "web-n1",
            &[
                (SOURCE, "file"),
                (HASH, "h1"),
                ("kubernetes.io/config.seen", "x"),
            ],
        );
        let m = mirror_of(&web, "n1", Some("uid-1"));
        assert!(is_mirror(&m) && is_static(&m));
        assert_eq!(annotation(&m, MIRROR), Some("h1"));
        assert_eq!(annotation(&m, "kubernetes.io/config.seen"), None);
        assert_eq!(m.metadata.owner_references.unwrap()[0].name, "n1");
    }
}
