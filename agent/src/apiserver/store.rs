//! The API's storage: every object in memory for reads, written through to an embedded redb
//! database before a write is acknowledged, and a window of recent changes that watches replay.
//!
//! One lock orders all writes, so resourceVersions are a single increasing counter, persisted with
//! each write: they keep increasing across restarts. A watch from a version older than the window
//! (or from before the last restart) gets 410 Gone, as from an etcd compaction.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resource::Resource;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Changes kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 10_000;

pub type Object = Arc<Value>;

/// The changes a watch replays, and the receiver of those to come.
pub type Watch = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub kind: ChangeType,
    pub object: Object,
    /// The object before this change (for watches whose selector it stopped or started matching).
    pub previous: Option<Object>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: Resource,
    namespace: String,
    name: String,
}

impl Key {
    fn new(resource: Resource, namespace: &str, name: &str) -> Key {
        Key {
            resource,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn of(resource: Resource, obj: &Value) -> Key {
        Key::new(resource, str_at(obj, "namespace"), str_at(obj, "name"))
    }

    fn db_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.resource.plural(),
            self.namespace,
            self.name
        )
    }
}

fn str_at<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open database {path}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("read database")]
    Read(#[source] redb::Error),
    #[error("object {key} in the database is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    fn current(&self, key: &Key) -> Result<Object, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key.resource.plural(), &key.name))
    }
}

struct State {
    rv: u64,
    objects: BTreeMap<Key, Object>,
    history: VecDeque<Arc<Change>>,
    /// Watches from this version on can be served from `history`.
    floor: u64,
}

pub struct Store {
    db: Database,
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source: redb::Error| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = Database::create(path).map_err(|e| open_err(e.into()))?;
        // It holds Secrets: owner only, like etcd's files.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| open_err(redb::Error::Io(e)))?;
        let (rv, objects) = load(&db)?;
        let (changes, _) = broadcast::channel(4096);
        Ok(Store {
            db,
            state: Mutex::new(State {
                rv,
                objects,
                history: VecDeque::new(),
                floor: rv,
            }),
            changes,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Object> {
        self.state()
            .objects
            .get(&Key::new(resource, namespace, name))
            .cloned()
    }

    /// Every object of a type (in one namespace if given), in key order, and the version they
    /// are current at.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> (Vec<Object>, u64) {
        let state = self.state();
        let start = Key::new(resource, namespace.unwrap_or(""), "");
        let items = state
            .objects
            .range(start..)
            .take_while(|(k, _)| {
                k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v.clone())
            .collect();
        (items, state.rv)
    }

    pub fn create(&self, resource: Resource, obj: Value) -> Result<Object, ApiError> {
        let mut state = self.state();
        let key = Key::of(resource, &obj);
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource.plural(), &key.name));
        }
        self.commit(&mut state, resource, key, ChangeType::Added, obj, None)
    }

    /// Read-modify-write of one object: `change` sees the current object and returns the new one,
    /// or `None` to leave it alone. An update that changes nothing is not written (no new version).
    pub fn update(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<Object, ApiError> {
        let mut state = self.state();
        let key = Key::new(resource, namespace, name);
        let current = state.current(&key)?;
        let Some(mut obj) = change(&current)? else {
            return Ok(current);
        };
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if obj == *current {
            return Ok(current);
        }
        self.commit(
            &mut state,
            resource,
            key,
            ChangeType::Modified,
            obj,
            Some(current),
        )
    }

    /// Removes an object once `check` (preconditions) accepts the current one.
    pub fn remove(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Value) -> Result<(), ApiError>,
    ) -> Result<Object, ApiError> {
        let mut state = self.state();
        let key = Key::new(resource, namespace, name);
        let current = state.current(&key)?;
        check(&current)?;
        let obj = (*current).clone();
        self.commit(
            &mut state,
            resource,
            key,
            ChangeType::Deleted,
            obj,
            Some(current),
        )
    }

    /// Gives the object the next resourceVersion, writes the change to disk, then makes it
    /// visible: memory, history, watchers.
    fn commit(
        &self,
        state: &mut State,
        resource: Resource,
        key: Key,
        kind: ChangeType,
        mut obj: Value,
        previous: Option<Object>,
    ) -> Result<Object, ApiError> {
        let rv = state.rv + 1;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let obj = Arc::new(obj);
        let db_key = key.db_key();
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut objects = txn.open_table(OBJECTS)?;
                if kind == ChangeType::Deleted {
                    objects.remove(db_key.as_str())?;
                } else {
                    let bytes = serde_json::to_vec(&*obj).expect("serialise JSON value");
                    objects.insert(db_key.as_str(), bytes.as_slice())?;
                }
                txn.open_table(META)?.insert("resourceVersion", rv)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| ApiError::internal(format!("storage: write {db_key}: {e}")))?;
        state.rv = rv;
        if kind == ChangeType::Deleted {
            state.objects.remove(&key);
        } else {
            state.objects.insert(key, obj.clone());
        }
        let change = Arc::new(Change {
            rv,
            resource,
            kind,
            object: obj.clone(),
            previous,
        });
        if state.history.len() == HISTORY {
            if let Some(old) = state.history.pop_front() {
                state.floor = old.rv;
            }
        }
        state.history.push_back(change.clone());
        let _ = self.changes.send(change);
        Ok(obj)
    }

    /// The changes to `resource` after version `from`, and a receiver for those still to come,
    /// with no gap between the two. 410 Gone when `from` is older than the history window.
    pub fn watch(&self, resource: Resource, from: u64) -> Result<Watch, ApiError> {
        let state = self.state();
        if from < state.floor {
            return Err(ApiError::gone(format!(
                "too old resource version: {from} ({})",
                state.floor
            )));
        }
        let replay = state
            .history
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
            .cloned()
            .collect();
        Ok((replay, self.changes.subscribe()))
    }

    /// All changes from now on, of every type (the built-in controllers' feed).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }
}

fn load(db: &Database) -> Result<(u64, BTreeMap<Key, Object>), StoreError> {
    let txn = db.begin_write().map_err(|e| StoreError::Read(e.into()))?;
    {
        // Create the tables on first start, so reads below find them.
        txn.open_table(OBJECTS)
            .map_err(|e| StoreError::Read(e.into()))?;
        txn.open_table(META)
            .map_err(|e| StoreError::Read(e.into()))?;
    }
    txn.commit().map_err(|e| StoreError::Read(e.into()))?;
    let read = db.begin_read().map_err(|e| StoreError::Read(e.into()))?;
    let meta = read
        .open_table(META)
        .map_err(|e| StoreError::Read(e.into()))?;
    let rv = meta
        .get("resourceVersion")
        .map_err(|e| StoreError::Read(e.into()))?
        .map(|v| v.value())
        .unwrap_or(0);
    let table = read
        .open_table(OBJECTS)
        .map_err(|e| StoreError::Read(e.into()))?;
    let mut objects = BTreeMap::new();
    for entry in table.iter().map_err(|e| StoreError::Read(e.into()))? {
        let (k, v) = entry.map_err(|e| StoreError::Read(e.into()))?;
        let key = k.value().to_owned();
        let obj: Value =
            serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                key: key.clone(),
                source,
            })?;
        let Some(resource) = key
            .split('/')
            .next()
            .and_then(|p| Resource::ALL.into_iter().find(|r| r.plural() == p))
        else {
            continue;
        };
        objects.insert(Key::of(resource, &obj), Arc::new(obj));
    }
    Ok((rv, objects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn versions_increase_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        {
            let store = Store::open(&path).unwrap();
            store.create(Resource::Pods, pod("a")).unwrap();
            store.create(Resource::Pods, pod("b")).unwrap();
            let err = store.create(Resource::Pods, pod("a")).unwrap_err();
            assert_eq!(err.reason, "AlreadyExists");
            store
                .remove(Resource::Pods, "default", "b", |_| Ok(()))
                .unwrap();
            assert_eq!(store.resource_version(), 3);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.resource_version(), 3);
        let (items, _) = store.list(Resource::Pods, Some("default"));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["resourceVersion"], "1");
        // Too old after a restart: the history is gone.
        assert_eq!(store.watch(Resource::Pods, 1).unwrap_err().code, 410);
        assert!(store.watch(Resource::Pods, 3).is_ok());
    }

    #[test]
    fn watch_replays_newer_changes_of_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("api.db")).unwrap();
        store.create(Resource::Pods, pod("a")).unwrap();
        store
            .create(Resource::Namespaces, json!({"metadata": {"name": "x"}}))
            .unwrap();
        store
            .update(Resource::Pods, "default", "a", |p| {
                let mut p = p.clone();
                p["metadata"]["labels"] = json!({"k": "v"});
                Ok(Some(p))
            })
            .unwrap();
        // An update that changes nothing writes nothing.
        store
            .update(Resource::Pods, "default", "a", |p| Ok(Some(p.clone())))
            .unwrap();
        let (replay, _) = store.watch(Resource::Pods, 1).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].rv, 3);
        assert_eq!(replay[0].kind, ChangeType::Modified);
        let (items, rv) = store.list(Resource::Pods, None);
        assert_eq!((items.len(), rv), (1, 3));
    }
}
