//! The API-server source, the same code for a real cluster and for nodelet's built-in API:
//! register the Node and keep its status and Lease fresh, watch the pods bound to this node, report
//! their status back (strategic merge patch with a uid precondition, as kubelet's status manager),
//! finish graceful deletions with `DELETE gracePeriodSeconds=0` and a uid precondition, keep a
//! mirror pod for each static pod (see `mirror`), and post the events the pod workers record.
//!
//! ```text
//!  watch pods (spec.nodeName=me) ──▶ desired ──▶ pod workers ──▶ node.pods (status) ─┐
//!  PATCH pods/status, DELETE grace 0 ◀── reporter ◀── node.changed ◀────────────────┘
//!  PUT lease every 10 s, PATCH nodes/status every 10 s
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::mirror::{self, Action};
use super::{events, node_status, Desired};
use crate::node::{Node as Agent, PodEvent, Reported};

const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    // At most this many requests in flight, as kubelet's client has kubeAPIQPS/kubeAPIBurst:
    // after a restart, a thousand pods' workers ask for tokens and write statuses at once, and
    // each request in flight is a connection of its own (HTTP/1.1), which the API server caps.
    let limit = tower::limit::ConcurrencyLimitLayer::new(API_CONCURRENCY);
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&limit)
        .build())
}

/// Requests the agent has in flight to the API server at once (watches count until their
/// response starts).
const API_CONCURRENCY: usize = 64;

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub struct ApiSource {
    client: kube::Client,
    agent: Arc<Agent>,
    name: String,
    /// The pods bound to this node as the API last said, by UID (mirror pods included).
    pods: Arc<Mutex<BTreeMap<String, Arc<Pod>>>>,
    /// The Node's UID once registered (owner of the Lease and of mirror pods).
    node_uid: Mutex<Option<String>>,
}

impl ApiSource {
    pub fn new(client: kube::Client, agent: Arc<Agent>) -> ApiSource {
        let name = agent.ctx.node_name.clone();
        ApiSource {
            client,
            agent,
            name,
            pods: Default::default(),
            node_uid: Mutex::new(None),
        }
    }

    /// Runs every part of the source until the agent stops.
    pub async fn run(
        self,
        tx: watch::Sender<Desired>,
        events: tokio::sync::mpsc::UnboundedReceiver<PodEvent>,
    ) {
        let this = Arc::new(self);
        tokio::spawn(this.clone().heartbeat());
        tokio::spawn(this.clone().report_status());
        tokio::spawn(this.clone().post_events(events));
        this.watch_pods(tx).await;
    }

    /// Registers the Node, then renews the Lease and the Node's status every 10 s.
    async fn heartbeat(self: Arc<Self>) {
        let since = Timestamp::now();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut delay = Duration::from_millis(200);
        let mut node_uid = loop {
            match self.register(&nodes, since).await {
                Ok(uid) => break uid,
                Err(e) => {
                    warn!(error = %crate::error_chain(e.as_ref()), "register node; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(7));
                }
            }
        };
        info!(node = %self.name, "node registered");
        loop {
            self.node_uid
                .lock()
                .expect("node uid lock")
                .clone_from(&node_uid);
            if let Err(e) = self.renew_lease(node_uid.as_deref()).await {
                warn!(error = %crate::error_chain(&e), "renew node lease");
            }
            let mut status = node_status::status(&self.agent.config, &self.name, since);
            status.images = Some(node_status::images(&self.agent.images));
            let patch = Patch::Merge(json!({ "status": status }));
            if let Err(e) = nodes
                .patch_status(&self.name, &PatchParams::default(), &patch)
                .await
            {
                warn!(error = %crate::error_chain(&e), "update node status");
                if api_error_code(&e) == Some(404) {
                    // Someone deleted the Node: register it again.
                    if let Ok(uid) = self.register(&nodes, since).await {
                        node_uid = uid;
                    }
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    /// Creates the Node, or brings an existing one's labels and podCIDR up to date.
    async fn register(
        &self,
        nodes: &Api<Node>,
        since: Timestamp,
    ) -> anyhow::Result<Option<String>> {
        let node = node_status::node(&self.agent.config, &self.name, since);
        match nodes.create(&PostParams::default(), &node).await {
            Ok(created) => {
                let patch = Patch::Merge(json!({ "status": node.status }));
                nodes
                    .patch_status(&self.name, &PatchParams::default(), &patch)
                    .await?;
                Ok(created.metadata.uid)
            }
            Err(e) if api_error_code(&e) == Some(409) => {
                let existing = nodes.get(&self.name).await?;
                let mut spec = json!({});
                if existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_none()
                {
                    spec = json!({"podCIDR": self.agent.config.pod_cidr, "podCIDRs": [self.agent.config.pod_cidr]});
                }
                let patch = Patch::Merge(json!({
                    "metadata": {"labels": node_status::labels(&self.agent.config, &self.name)},
                    "spec": spec,
                }));
                nodes
                    .patch(&self.name, &PatchParams::default(), &patch)
                    .await?;
                Ok(existing.metadata.uid)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn renew_lease(&self, node_uid: Option<&str>) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        let now = MicroTime(Timestamp::now());
        let owner = node_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.name.clone(),
                uid: uid.to_owned(),
                ..Default::default()
            }]
        });
        match leases.get_opt(&self.name).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.holder_identity = Some(self.name.clone());
                spec.lease_duration_seconds = Some(LEASE_SECONDS);
                if lease.metadata.owner_references.is_none() {
                    lease.metadata.owner_references = owner;
                }
                leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(NODE_LEASE_NAMESPACE.into()),
                        owner_references: owner,
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.name.clone()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                leases.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    /// Lists and watches the pods bound to this node (kube-runtime's watcher relists on 410) and
    /// publishes the whole set after each change.
    async fn watch_pods(&self, tx: watch::Sender<Desired>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.name));
        let mut stream = watcher(pods, config).boxed();
        let mut buffer = BTreeMap::new();
        while let Some(event) = stream.next().await {
            let mut current = self.pods.lock().expect("pods lock");
            match event {
                // A (re)list in progress says nothing yet: publishing now would read as "every
                // pod not listed so far is gone" and delete running pods (kubelet waits for
                // every source to be ready before it kills anything).
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let pod = keep_if_same(current.get(&uid), pod);
                    buffer.insert(uid, pod);
                    continue;
                }
                Ok(watcher::Event::InitDone) => *current = std::mem::take(&mut buffer),
                Ok(watcher::Event::Apply(pod)) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let pod = keep_if_same(current.get(&uid), pod);
                    current.insert(uid, pod);
                }
                Ok(watcher::Event::Delete(pod)) => {
                    current.remove(pod.metadata.uid.as_deref().unwrap_or_default());
                }
                Err(e) => {
                    warn!(error = %crate::error_chain(&e), "watch pods");
                    drop(current);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            // Mirror pods are the API's copies of static pods: never run.
            let snapshot: BTreeMap<String, Arc<Pod>> = current
                .iter()
                .filter(|(_, p)| !mirror::is_mirror(p))
                .map(|(uid, p)| (uid.clone(), p.clone()))
                .collect();
            drop(current);
            tx.send_if_modified(|d| {
                let changed = d.as_ref().is_none_or(|old| !same_pods(old, &snapshot));
                *d = Some(snapshot);
                changed
            });
            self.agent.changed.notify_one();
        }
    }

    /// Sends each pod's status when it changes, and finishes deletions once the pod is gone from
    /// the node.
    async fn report_status(self: Arc<Self>) {
        // What was last sent for each pod: the status its worker reported, shared with the
        // node's pod map while it stays the same.
        let mut sent: HashMap<String, Arc<PodStatus>> = HashMap::new();
        loop {
            let (mirrors, wanted): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = self
                .pods
                .lock()
                .expect("pods lock")
                .values()
                .cloned()
                .partition(|p| mirror::is_mirror(p));
            let running = self.agent.pods.lock().expect("pod map lock").clone();
            sent.retain(|uid, _| {
                wanted
                    .iter()
                    .chain(&mirrors)
                    .any(|p| p.metadata.uid.as_deref() == Some(uid))
            });
            self.sync_mirrors(&mirrors, &running, &mut sent).await;
            for pod in wanted {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                match running.get(uid) {
                    Some(reported) => self.report(&pod, &reported.status, &mut sent).await,
                    // Not on the node (any more): its worker has stopped everything.
                    None if pod.metadata.deletion_timestamp.is_some() => {
                        self.delete_now(&pod, "pod deletion finished").await
                    }
                    None => {}
                }
            }
            tokio::select! {
                _ = self.agent.changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    }

    /// Creates, deletes and reports the status of mirror pods (kubelet's mirror client and
    /// status manager for static pods).
    async fn sync_mirrors(
        &self,
        mirrors: &[Arc<Pod>],
        running: &BTreeMap<String, Reported>,
        sent: &mut HashMap<String, Arc<PodStatus>>,
    ) {
        let statics: Vec<&Pod> = running
            .values()
            .map(|r| r.pod.as_ref())
            .filter(|p| mirror::is_static(p))
            .collect();
        let mirrors: Vec<&Pod> = mirrors.iter().map(Arc::as_ref).collect();
        let node_uid = self.node_uid.lock().expect("node uid lock").clone();
        for action in mirror::plan(&statics, &mirrors) {
            match action {
                Action::Create(pod) => {
                    let mirror = mirror::mirror_of(pod, &self.name, node_uid.as_deref());
                    let ns = mirror.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    match api.create(&PostParams::default(), &mirror).await {
                        Ok(_) => {
                            info!(pod = ?mirror.metadata.name, namespace = %ns, "mirror pod created")
                        }
                        Err(e) => {
                            debug!(pod = ?mirror.metadata.name, error = %crate::error_chain(&e), "create mirror pod")
                        }
                    }
                }
                Action::Delete(pod) => self.delete_now(pod, "mirror pod deleted").await,
                Action::Status { mirror, of } => {
                    let uid = of.metadata.uid.as_deref().unwrap_or_default();
                    if let Some(reported) = running.get(uid) {
                        self.report(mirror, &reported.status, sent).await;
                    }
                }
            }
        }
    }

    /// Sends the status a worker reported as the status of `pod` (an API object: a pod or a
    /// mirror pod) unless it was the last one sent, with the pod's uid as precondition.
    async fn report(
        &self,
        pod: &Pod,
        status: &Arc<PodStatus>,
        sent: &mut HashMap<String, Arc<PodStatus>>,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if sent
            .get(&uid)
            .is_some_and(|s| Arc::ptr_eq(s, status) || s == status)
        {
            return;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let patch =
            Patch::Merge(json!({"metadata": {"uid": uid}, "status": status_patch(pod, status)}));
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                sent.insert(uid, status.clone());
            }
            Err(e) => debug!(pod = %name, error = %crate::error_chain(&e), "patch pod status"),
        }
    }

    /// Deletes `pod` from the API at once (`gracePeriodSeconds=0`, its uid as precondition): the
    /// node is done with it. Gone already, or replaced by a new pod of that name, is fine.
    async fn delete_now(&self, pod: &Pod, done: &'static str) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => info!(pod = %name, namespace = %ns, "{done}"),
            Err(e) if matches!(api_error_code(&e), Some(404 | 409)) => {}
            Err(e) => warn!(pod = %name, error = %crate::error_chain(&e), "delete pod"),
        }
    }

    /// Posts the events pod workers record, as core/v1 Events from the kubelet, counted and
    /// rate-limited as kubelet's recorder does (`events`).
    async fn post_events(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<PodEvent>,
    ) {
        let mut correlator = events::Correlator::default();
        while let Some(ev) = events.recv().await {
            let now = Timestamp::now();
            let Some(send) = correlator.correlate(&ev, now) else {
                debug!(pod = %ev.name, reason = ev.reason, "event dropped: too many about the pod");
                continue;
            };
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ev.namespace);
            let (posted, update) = match send {
                events::Send::Create(p) => (p, false),
                events::Send::Update(p) => (p, true),
            };
            if update {
                let patch = json!({
                    "count": posted.count,
                    "lastTimestamp": Time(now),
                    "message": posted.message,
                });
                match api
                    .patch(
                        &posted.name,
                        &PatchParams::default(),
                        &Patch::Strategic(patch),
                    )
                    .await
                {
                    Ok(_) => continue,
                    // Expired (an hour after its last update) or removed: post it again.
                    Err(e) if api_error_code(&e) == Some(404) => {}
                    Err(e) => {
                        debug!(error = %crate::error_chain(&e), "patch event");
                        continue;
                    }
                }
            }
            let event = self.event(&ev, posted, now);
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                debug!(error = %crate::error_chain(&e), "post event");
            }
        }
    }

    fn event(&self, ev: &PodEvent, posted: events::Posted, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(posted.name),
                namespace: Some(ev.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(ev.namespace.clone()),
                name: Some(ev.name.clone()),
                uid: Some(ev.uid.clone()),
                field_path: ev.field_path.clone(),
                ..Default::default()
            },
            reason: Some(ev.reason.into()),
            message: Some(posted.message),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.name.clone()),
            }),
            first_timestamp: Some(Time(posted.first)),
            last_timestamp: Some(Time(now)),
            count: Some(posted.count),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.name.clone()),
            ..Default::default()
        }
    }
}

/// The merge patch that makes the API's status the node's: lists replaced whole (so no stale
/// container state survives), fields the node no longer reports cleared, and the conditions the
/// node does not own (PodScheduled, readiness gates) kept, as kubelet's status manager keeps them.
fn status_patch(api: &Pod, status: &PodStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(status).expect("serialise pod status");
    let old = api.status.clone().unwrap_or_default();
    let mine: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.clone())
        .collect();
    let mut conditions: Vec<serde_json::Value> = old
        .conditions
        .iter()
        .flatten()
        .filter(|c| !mine.contains(&c.type_))
        .map(|c| serde_json::to_value(c).expect("serialise condition"))
        .collect();
    conditions.extend(patch["conditions"].as_array().cloned().unwrap_or_default());
    patch["conditions"] = serde_json::Value::Array(conditions);
    if let serde_json::Value::Object(old) =
        serde_json::to_value(&old).expect("serialise pod status")
    {
        for key in old.keys() {
            if patch.get(key).is_none() {
                patch[key] = serde_json::Value::Null;
            }
        }
    }
    patch
}

/// Keeps the pod the workers already have when only its status or version changed, so the
/// node's own status reports do not wake every worker.
fn keep_if_same(old: Option<&Arc<Pod>>, new: Pod) -> Arc<Pod> {
    match old {
        Some(old) if old.spec == new.spec && same_meta(&old.metadata, &new.metadata) => old.clone(),
        _ => Arc::new(new),
    }
}

fn same_meta(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    let strip = |m: &ObjectMeta| ObjectMeta {
        resource_version: None,
        managed_fields: None,
        ..m.clone()
    };
    strip(a) == strip(b)
}

fn same_pods(a: &BTreeMap<String, Arc<Pod>>, b: &BTreeMap<String, Arc<Pod>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
}
