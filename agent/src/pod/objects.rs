//! The ConfigMaps and Secrets the node's pods refer to, each watched while some pod uses it
//! (kubelet's watch-based `ConfigMapManager`/`SecretManager`): a pod's worker reads the newest
//! copy from here and is woken when one of its objects changes, so that an update reaches the
//! pod's volumes in about the time the watch takes, not kubelet's sync period.
//!
//! One watch per object (`fieldSelector=metadata.name=<name>`), as kubelet does: the node
//! authorizer of a real cluster lets a node read only the objects its pods name. An immutable
//! object is not watched once it has been seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tracing::warn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// An object's content: a ConfigMap's `data` and `binaryData`, or a Secret's `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    /// A ConfigMap's `data` (the only part the environment may read).
    pub strings: BTreeMap<String, String>,
    /// A ConfigMap's `binaryData`, or a Secret's `data`.
    pub bytes: BTreeMap<String, Vec<u8>>,
    pub immutable: bool,
}

impl Object {
    fn from_config_map(cm: ConfigMap) -> Object {
        Object {
            strings: cm.data.unwrap_or_default(),
            bytes: cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            immutable: cm.immutable == Some(true),
        }
    }

    fn from_secret(s: Secret) -> Object {
        Object {
            strings: BTreeMap::new(),
            bytes: s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            immutable: s.immutable == Some(true),
        }
    }

    /// Every key with its value, as a volume shows it.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let strings = self.strings.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        strings.chain(self.bytes.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    /// The keys and values the environment may read: a ConfigMap's `data` (not its
    /// `binaryData`), a Secret's `data`.
    pub fn env(&self, kind: Kind) -> BTreeMap<String, String> {
        match kind {
            Kind::ConfigMap => self.strings.clone(),
            Kind::Secret => self
                .bytes
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }
}

/// What is known of a watched object.
#[derive(Clone, Debug)]
enum State {
    /// The watch has not listed it yet.
    Pending,
    Found(Arc<Object>),
    Missing,
}

struct Entry {
    state: State,
    /// The workers of the pods that use it (by pod UID), woken on a change.
    users: HashMap<String, Arc<Notify>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Objects {
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl Objects {
    /// Sets the objects pod `uid` uses (an empty set when it is gone): watches start for new
    /// ones and stop for those no pod uses any more.
    pub fn use_objects(
        &self,
        client: Option<&kube::Client>,
        uid: &str,
        wake: &Arc<Notify>,
        keys: &HashSet<Key>,
    ) {
        let mut entries = self.entries.lock().expect("objects lock");
        entries.retain(|key, entry| {
            if !keys.contains(key) {
                entry.users.remove(uid);
            }
            let keep = !entry.users.is_empty();
            if !keep {
                if let Some(task) = entry.task.take() {
                    task.abort();
                }
            }
            keep
        });
        let Some(client) = client else { return };
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                state: State::Pending,
                users: HashMap::new(),
                task: Some(tokio::spawn(watch(
                    client.clone(),
                    key.clone(),
                    self.entries.clone(),
                ))),
            });
            entry.users.insert(uid.to_owned(), wake.clone());
        }
    }

    /// The object's newest content (`None`: there is no such object), from the watch once it has
    /// listed the object, read from the API before that.
    pub async fn get(
        &self,
        client: &kube::Client,
        key: &Key,
    ) -> Result<Option<Arc<Object>>, String> {
        let state = self
            .entries
            .lock()
            .expect("objects lock")
            .get(key)
            .map(|e| e.state.clone());
        match state {
            Some(State::Found(object)) => Ok(Some(object)),
            Some(State::Missing) => Ok(None),
            Some(State::Pending) | None => read(client, key).await.map(|o| o.map(Arc::new)),
        }
    }
}

async fn read(client: &kube::Client, key: &Key) -> Result<Option<Object>, String> {
    let failed = |e: kube::Error| {
        format!(
            "get {} {}/{}: {}",
            key.kind,
            key.namespace,
            key.name,
            crate::error_chain(&e)
        )
    };
    match key.kind {
        Kind::ConfigMap => kube::Api::<ConfigMap>::namespaced(client.clone(), &key.namespace)
            .get_opt(&key.name)
            .await
            .map(|o| o.map(Object::from_config_map))
            .map_err(failed),
        Kind::Secret => kube::Api::<Secret>::namespaced(client.clone(), &key.namespace)
            .get_opt(&key.name)
            .await
            .map(|o| o.map(Object::from_secret))
            .map_err(failed),
    }
}

/// Watches one object until no pod uses it (the task is aborted) or it is immutable.
async fn watch(client: kube::Client, key: Key, entries: Arc<Mutex<HashMap<Key, Entry>>>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = match key.kind {
        Kind::ConfigMap => watcher(
            kube::Api::<ConfigMap>::namespaced(client, &key.namespace),
            config,
        )
        .map(|e| e.map(|e| Seen::from(e, Object::from_config_map)))
        .boxed(),
        Kind::Secret => watcher(
            kube::Api::<Secret>::namespaced(client, &key.namespace),
            config,
        )
        .map(|e| e.map(|e| Seen::from(e, Object::from_secret)))
        .boxed(),
    };
    let mut listed = None;
    while let Some(event) = stream.next().await {
        let state = match event {
            Ok(Seen::Init) => {
                listed = None;
                continue;
            }
            Ok(Seen::Listed(object)) => {
                listed = Some(object);
                continue;
            }
            Ok(Seen::InitDone) => match listed.take() {
                Some(object) => State::Found(Arc::new(object)),
                None => State::Missing,
            },
            Ok(Seen::Applied(object)) => State::Found(Arc::new(object)),
            Ok(Seen::Deleted) => State::Missing,
            Err(e) => {
                warn!(error = %crate::error_chain(&e), %key.kind, %key.namespace, %key.name, "watch");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let immutable = matches!(&state, State::Found(o) if o.immutable);
        let mut entries = entries.lock().expect("objects lock");
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        let changed = match (&entry.state, &state) {
            (State::Found(a), State::Found(b)) => a != b,
            (State::Missing, State::Missing) => false,
            _ => true,
        };
        entry.state = state;
        if changed {
            for wake in entry.users.values() {
                wake.notify_one();
            }
        }
        if immutable {
            entry.task = None;
            return;
        }
    }
}

/// A watch event, with the object's content.
enum Seen {
    Init,
    Listed(Object),
    InitDone,
    Applied(Object),
    Deleted,
}

impl Seen {
    fn from<K>(event: watcher::Event<K>, content: fn(K) -> Object) -> Seen {
        match event {
            watcher::Event::Init => Seen::Init,
            watcher::Event::InitApply(k) => Seen::Listed(content(k)),
            watcher::Event::InitDone => Seen::InitDone,
            watcher::Event::Apply(k) => Seen::Applied(content(k)),
            watcher::Event::Delete(_) => Seen::Deleted,
        }
    }
}

/// The ConfigMaps and Secrets a pod's containers and volumes read.
pub fn pod_keys(pod: &k8s_openapi::api::core::v1::Pod) -> HashSet<Key> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let key = |kind, name: &str| Key {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let spec = super::build::pod_spec(pod);
    let mut keys = HashSet::new();
    let ephemeral = super::build::ephemeral_containers(pod);
    for c in super::status::containers(pod)
        .map(|(c, _)| c)
        .chain(&ephemeral)
    {
        let (maps, secrets) = super::build::env_sources(c);
        keys.extend(maps.iter().map(|n| key(Kind::ConfigMap, n)));
        keys.extend(secrets.iter().map(|n| key(Kind::Secret, n)));
    }
    for v in spec.volumes.iter().flatten() {
        keys.extend(super::projected::sources(v).map(|(kind, name)| key(kind, name)));
    }
    keys
}
