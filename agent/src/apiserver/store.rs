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
/// Changes kept for watches that resume from an older resourceVersion: at most this many, and
/// at most this many bytes of objects as JSON (a window of huge objects is shorter, not
/// bigger). They are kept as JSON only (a parsed object weighs about eight times its JSON) and
/// parsed again when a watch replays them: 2,000 changes are a few seconds of a thousand pods
/// starting at once, enough for a client to resume after a reconnect; one that falls further
/// behind gets 410 Gone and lists again, as kube-apiserver's watch cache answers it (100
/// changes a resource by default).
const HISTORY: usize = 2_000;
const HISTORY_BYTES: usize = 16 * 1024 * 1024;
/// Changes the live feed holds for watchers that have not read them yet. A watcher further
/// behind catches up from the history (`Store::watch` again from its last version): the feed
/// holds parsed objects, so it is kept short.
const FEED: usize = 256;

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
    /// `object` as JSON, serialised once (for the database) and shared by every watch.
    pub json: bytes::Bytes,
    /// The object before this change (for watches whose selector it stopped or started matching).
    pub previous: Option<Object>,
}

/// A change as the history keeps it: its JSON, and the JSON of the object before it (the same
/// bytes as the earlier change's, not a copy).
#[derive(Clone, Debug)]
struct Recorded {
    rv: u64,
    resource: Resource,
    kind: ChangeType,
    json: bytes::Bytes,
    previous: Option<bytes::Bytes>,
}

impl Recorded {
    fn parse(&self) -> Arc<Change> {
        let parse = |json: &[u8]| -> Object {
            Arc::new(serde_json::from_slice(json).expect("the store's own JSON parses"))
        };
        Arc::new(Change {
            rv: self.rv,
            resource: self.resource,
            kind: self.kind,
            object: parse(&self.json),
            json: self.json.clone(),
            previous: self.previous.as_deref().map(parse),
        })
    }
}

/// An object as stored: its JSON (which the history keeps of the object a change replaced),
/// and the parsed object unless its type is read rarely (`parsed_in_memory`).
#[derive(Clone, Debug)]
struct Stored {
    object: Option<Object>,
    json: bytes::Bytes,
}

impl Stored {
    fn new(resource: Resource, object: &Object, json: bytes::Bytes) -> Stored {
        Stored {
            object: parsed_in_memory(resource).then(|| object.clone()),
            json,
        }
    }

    fn object(&self) -> Object {
        self.object.clone().unwrap_or_else(|| {
            Arc::new(serde_json::from_slice(&self.json).expect("the store's own JSON parses"))
        })
    }
}

/// Whether objects of a type are kept parsed as well as in JSON. A parsed object weighs about
/// eight times its JSON; Events are most of the objects on a busy node (four or more for each
/// pod started) and are read only by `kubectl describe` and `get events`, which parse them then
/// (a few milliseconds for thousands).
fn parsed_in_memory(resource: Resource) -> bool {
    resource != Resource::Events
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
    #[error(
        "{path} is corrupt ({reason}): move it aside and restore a backup, or remove it to start \
         with an empty API"
    )]
    Corrupt { path: String, reason: String },
    #[error(
        "{path} exists but is empty: the API's data was lost; restore a backup, or remove it to \
         start with an empty API"
    )]
    Empty { path: String },
    /// What `nodelet check-store` found, in its words.
    #[error("{0}")]
    Checked(String),
}

/// Stored values: a version byte, the sha256 of the key and the JSON, then the JSON. redb checks
/// its pages' checksums only when it repairs a file; this catches a damaged object at load, by
/// its key, and one stored under another object's key.
const VALUE_V1: u8 = 1;

fn value_digest(key: &str, json: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(json);
    h.finalize().into()
}

fn encode_value(key: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(33 + json.len());
    out.push(VALUE_V1);
    out.extend_from_slice(&value_digest(key, json));
    out.extend_from_slice(json);
    out
}

/// The JSON of a stored value, checked; values written before checksums (plain JSON) pass as
/// they are, and get one at their next write.
fn decode_value<'a>(key: &str, value: &'a [u8]) -> Result<&'a [u8], String> {
    match value.split_first() {
        Some((b'{', _)) => Ok(value),
        Some((&VALUE_V1, rest)) if rest.len() >= 32 => {
            let (digest, json) = rest.split_at(32);
            if digest == value_digest(key, json) {
                Ok(json)
            } else {
                Err("checksum mismatch".into())
            }
        }
        _ => Err("unknown value format".into()),
    }
}

/// redb's page cache (1 GiB by default, filled by every page written): the API reads the file
/// only at start, and a write's B-tree path is in the kernel's page cache anyway.
const DB_CACHE: usize = 4 * 1024 * 1024;

/// When a failed write is retried: the database is reopened at most this often.
const REOPEN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

impl State {
    fn current(&self, key: &Key) -> Result<&Stored, ApiError> {
        self.objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(key.resource.plural(), &key.name))
    }
}

struct State {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Recorded>,
    /// Watches from this version on can be served from `history`.
    floor: u64,
    /// What the objects of `history` weigh as JSON.
    history_bytes: usize,
    /// The database, `None` after a write failed: redb answers every later call with
    /// "Previous I/O error" until it is closed and opened again (its repair then keeps the last
    /// commit), which the next write does, so writes resume once the disk has room again.
    db: Option<Database>,
    reopen_after: std::time::Instant,
    /// The change whose write failed: it may still have reached the disk (written, then the
    /// fsync failed); after reopening, the stored resourceVersion tells.
    pending: Option<Pending>,
}

struct Pending {
    key: Key,
    change: Arc<Change>,
    previous_json: Option<bytes::Bytes>,
}

pub struct Store {
    path: std::path::PathBuf,
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Store {
    /// Opens the store, or makes an empty one where no file is. A file that cannot be read
    /// whole (corrupt, truncated, emptied) is refused with what to do, never replaced.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_db(path)?;
        let (rv, objects) = load(&db, path)?;
        let (changes, _) = broadcast::channel(FEED);
        Ok(Store {
            path: path.to_owned(),
            state: Mutex::new(State {
                rv,
                objects,
                history: VecDeque::new(),
                floor: rv,
                history_bytes: 0,
                db: Some(db),
                reopen_after: std::time::Instant::now(),
                pending: None,
            }),
            changes,
        })
    }

    /// Reads a store file through, as `open` would, and says how many objects it holds. Run in
    /// a process of its own before the agent opens the file: redb panics on some damage, and a
    /// release build aborts on a panic.
    pub fn check(path: &Path) -> Result<(usize, u64), StoreError> {
        let db = open_db(path)?;
        let (rv, objects) = load(&db, path)?;
        Ok((objects.len(), rv))
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
            .map(Stored::object)
    }

    /// Every object of a type (in one namespace if given), in key order, and the version they
    /// are current at.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> (Vec<Object>, u64) {
        let (items, rv) = self.list_stored(resource, namespace);
        (items.iter().map(Stored::object).collect(), rv)
    }

    fn list_stored(&self, resource: Resource, namespace: Option<&str>) -> (Vec<Stored>, u64) {
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
        let stored = state.current(&key)?.clone();
        let current = stored.object();
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
            Some((current, stored.json)),
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
        let stored = state.current(&key)?.clone();
        let current = stored.object();
        check(&current)?;
        let obj = (*current).clone();
        self.commit(
            &mut state,
            resource,
            key,
            ChangeType::Deleted,
            obj,
            Some((current, stored.json)),
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
        previous: Option<(Object, bytes::Bytes)>,
    ) -> Result<Object, ApiError> {
        let rv = state.rv + 1;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let json = serde_json::to_vec(&obj)
            .expect("serialise JSON value")
            .into();
        let obj = Arc::new(obj);
        let (previous, previous_json) = previous.unzip();
        let change = Arc::new(Change {
            rv,
            resource,
            kind,
            object: obj.clone(),
            json,
            previous,
        });
        let db_key = key.db_key();
        let db = self.writable(state)?;
        if let Err(e) = write(db, &db_key, &change) {
            // Closed now, reopened by a later write: see `State::db`.
            state.db = None;
            state.reopen_after = std::time::Instant::now() + REOPEN_BACKOFF;
            state.pending = Some(Pending {
                key,
                change,
                previous_json,
            });
            return Err(storage_error(&db_key, &e));
        }
        self.apply(state, key, change, previous_json);
        Ok(obj)
    }

    /// The database for a write, reopened after a failed one. A change whose write failed but
    /// reached the disk anyway is made visible first, so memory and disk agree again.
    fn writable<'s>(&self, state: &'s mut State) -> Result<&'s Database, ApiError> {
        if state.db.is_none() {
            let unavailable = || {
                ApiError::internal(format!(
                    "storage: {} is unavailable after a failed write; retrying",
                    self.path.display()
                ))
            };
            if std::time::Instant::now() < state.reopen_after {
                return Err(unavailable());
            }
            state.reopen_after = std::time::Instant::now() + REOPEN_BACKOFF;
            let db = open_db(&self.path).map_err(|e| {
                tracing::warn!(error = %crate::error_chain(&e), "reopen the API's store");
                unavailable()
            })?;
            let stored = stored_rv(&db).map_err(|_| unavailable())?;
            match state.pending.take() {
                Some(p) if stored == p.change.rv => {
                    // The failed write did land. The caller's change was made against the state
                    // before it (its version, its preconditions): it must be asked again.
                    self.apply(state, p.key, p.change, p.previous_json);
                    state.db = Some(db);
                    return Err(unavailable());
                }
                _ if stored == state.rv => {}
                pending => {
                    state.pending = pending;
                    return Err(ApiError::internal(format!(
                        "storage: {} holds resourceVersion {stored}, the API {}; restart nodelet",
                        self.path.display(),
                        state.rv
                    )));
                }
            }
            tracing::info!(path = %self.path.display(), "the API's store is writable again");
            state.db = Some(db);
        }
        Ok(state.db.as_ref().expect("database open"))
    }

    fn apply(
        &self,
        state: &mut State,
        key: Key,
        change: Arc<Change>,
        previous_json: Option<bytes::Bytes>,
    ) {
        state.rv = change.rv;
        if change.kind == ChangeType::Deleted {
            state.objects.remove(&key);
        } else {
            let stored = Stored::new(change.resource, &change.object, change.json.clone());
            state.objects.insert(key, stored);
        }
        state.history_bytes += change.json.len();
        state.history.push_back(Recorded {
            rv: change.rv,
            resource: change.resource,
            kind: change.kind,
            json: change.json.clone(),
            previous: previous_json,
        });
        while state.history.len() > HISTORY
            || (state.history_bytes > HISTORY_BYTES && state.history.len() > 1)
        {
            let Some(old) = state.history.pop_front() else {
                break;
            };
            state.history_bytes -= old.json.len();
            state.floor = old.rv;
        }
        let _ = self.changes.send(change);
    }

    /// The changes to `resource` after version `from`, and a receiver for those still to come,
    /// with no gap between the two. 410 Gone when `from` is older than the history window.
    pub fn watch(&self, resource: Resource, from: u64) -> Result<Watch, ApiError> {
        let (recorded, live) = {
            let state = self.state();
            if from < state.floor {
                return Err(ApiError::gone(format!(
                    "too old resource version: {from} ({})",
                    state.floor
                )));
            }
            let recorded: Vec<Recorded> = state
                .history
                .iter()
                .filter(|c| c.rv > from && c.resource == resource)
                .cloned()
                .collect();
            (recorded, self.changes.subscribe())
        };
        // Parsed outside the lock: writes go on meanwhile.
        let replay = recorded.iter().map(Recorded::parse).collect();
        Ok((replay, live))
    }

    /// All changes from now on, of every type (the built-in controllers' feed).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }
}

/// One change, written and committed in one transaction with the new resourceVersion.
fn write(db: &Database, db_key: &str, change: &Change) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut objects = txn.open_table(OBJECTS)?;
        if change.kind == ChangeType::Deleted {
            objects.remove(db_key)?;
        } else {
            objects.insert(db_key, encode_value(db_key, &change.json).as_slice())?;
        }
        txn.open_table(META)?.insert("resourceVersion", change.rv)?;
    }
    txn.commit()?;
    Ok(())
}

/// 507 while the disk is full (kube-apiserver's etcd says "database space exceeded"), 500 for
/// any other failure; either way the write did not take effect as far as the client knows.
fn storage_error(db_key: &str, e: &redb::Error) -> ApiError {
    let full = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ENOSPC));
    let message = format!("storage: write {db_key}: {e}");
    if full {
        ApiError::insufficient_storage(message)
    } else {
        ApiError::internal(message)
    }
}

/// The database file, made (owner only) where there is none.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.display().to_string();
    let open_err = |source: redb::Error| StoreError::Open {
        path: name.clone(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(redb::Error::Io(e)))?;
            return redb::Builder::new()
                .set_cache_size(DB_CACHE)
                .create_file(file)
                .map_err(|e| open_err(e.into()));
        }
        Err(e) => return Err(open_err(redb::Error::Io(e))),
        Ok(meta) if meta.len() == 0 => return Err(StoreError::Empty { path: name }),
        Ok(_) => {}
    }
    // It holds Secrets: owner only, like etcd's files.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| open_err(redb::Error::Io(e)))?;
    let mut db = redb::Builder::new()
        .set_cache_size(DB_CACHE)
        .set_repair_callback({
            let name = name.clone();
            move |_| tracing::warn!(path = %name, "repairing the API's store")
        })
        .open(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => open_err(e.into()),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() != std::io::ErrorKind::InvalidData =>
            {
                open_err(redb::Error::Io(io))
            }
            other => StoreError::Corrupt {
                path: name.clone(),
                reason: other.to_string(),
            },
        })?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(path = %path.display(), "the API's store was repaired: back to its last whole commit")
        }
        Err(e) => {
            return Err(StoreError::Corrupt {
                path: name,
                reason: e.to_string(),
            })
        }
    }
    Ok(db)
}

fn stored_rv(db: &Database) -> Result<u64, redb::Error> {
    let read = db.begin_read()?;
    match read.open_table(META) {
        Ok(meta) => Ok(meta.get("resourceVersion")?.map(|v| v.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Every object of the file, each checked; all the damaged ones are named at once.
fn load(db: &Database, path: &Path) -> Result<(u64, BTreeMap<Key, Stored>), StoreError> {
    let read_err = |e: redb::Error| StoreError::Read(e);
    let txn = db.begin_write().map_err(|e| read_err(e.into()))?;
    {
        // Create the tables on first start, so reads below find them.
        txn.open_table(OBJECTS).map_err(|e| read_err(e.into()))?;
        txn.open_table(META).map_err(|e| read_err(e.into()))?;
    }
    txn.commit().map_err(|e| read_err(e.into()))?;
    let rv = stored_rv(db).map_err(read_err)?;
    let read = db.begin_read().map_err(|e| read_err(e.into()))?;
    let table = read.open_table(OBJECTS).map_err(|e| read_err(e.into()))?;
    let mut objects = BTreeMap::new();
    let mut bad = Vec::new();
    for entry in table.iter().map_err(|e| read_err(e.into()))? {
        let (k, v) = entry.map_err(|e| read_err(e.into()))?;
        let key = k.value().to_owned();
        let parsed = decode_value(&key, v.value()).and_then(|json| {
            let obj: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
            let version = str_at(&obj, "resourceVersion").parse::<u64>().unwrap_or(0);
            if version > rv {
                return Err(format!(
                    "resourceVersion {version} is past the store's {rv}"
                ));
            }
            Ok((obj, bytes::Bytes::copy_from_slice(json)))
        });
        let (obj, json) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                bad.push(format!("{key}: {reason}"));
                continue;
            }
        };
        let Some(resource) = key
            .split('/')
            .next()
            .and_then(|p| Resource::ALL.into_iter().find(|r| r.plural() == p))
        else {
            continue;
        };
        let key_of = Key::of(resource, &obj);
        if key_of.db_key() != key {
            bad.push(format!("{key}: holds {}", key_of.db_key()));
            continue;
        }
        objects.insert(key_of, Stored::new(resource, &Arc::new(obj), json));
    }
    if !bad.is_empty() {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            reason: format!("damaged objects: {}", bad.join("; ")),
        });
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

    #[test]
    fn damaged_or_emptied_files_are_refused_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        {
            let store = Store::open(&path).unwrap();
            store.create(Resource::Pods, pod("a")).unwrap();
            store.create(Resource::Pods, pod("b")).unwrap();
        }
        // One damaged value, and one stored under another object's key: both named.
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(OBJECTS).unwrap();
                let good = t.get("pods/default/a").unwrap().unwrap().value().to_vec();
                let mut bad = good.clone();
                *bad.last_mut().unwrap() ^= 1;
                t.insert("pods/default/a", bad.as_slice()).unwrap();
                let json = decode_value("pods/default/a", &good).unwrap().to_vec();
                t.insert(
                    "pods/default/c",
                    encode_value("pods/default/c", &json).as_slice(),
                )
                .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("pods/default/a: checksum mismatch"), "{err}");
        assert!(
            err.contains("pods/default/c: holds pods/default/a"),
            "{err}"
        );
        assert!(err.contains(&path.display().to_string()), "{err}");
        // Garbage and an emptied file: refused, and left as they are.
        std::fs::write(&path, b"not a database at all, just bytes").unwrap();
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("is corrupt"), "{err}");
        std::fs::write(&path, b"").unwrap();
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("exists but is empty"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn events_are_kept_as_json_and_read_back_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("api.db")).unwrap();
        let event = json!({"metadata": {"name": "e", "namespace": "default"}, "reason": "Started"});
        store.create(Resource::Events, event).unwrap();
        let key = Key::new(Resource::Events, "default", "e");
        assert!(store.state().objects[&key].object.is_none());
        store
            .update(Resource::Events, "default", "e", |e| {
                let mut e = e.clone();
                e["count"] = json!(2);
                Ok(Some(e))
            })
            .unwrap();
        let read = store.get(Resource::Events, "default", "e").unwrap();
        assert_eq!(
            (read["reason"].as_str(), read["count"].as_i64()),
            (Some("Started"), Some(2))
        );
        let (items, _) = store.list(Resource::Events, Some("default"));
        assert_eq!(items[0]["metadata"]["resourceVersion"], "2");
        let (replay, _) = store.watch(Resource::Events, 1).unwrap();
        assert_eq!(replay[0].previous.as_ref().unwrap()["reason"], "Started");
    }

    #[test]
    fn values_carry_a_checksum_of_key_and_content() {
        let v = encode_value("pods/default/a", b"{}");
        assert_eq!(decode_value("pods/default/a", &v), Ok(&b"{}"[..]));
        assert!(decode_value("pods/default/b", &v).is_err());
        // Written before checksums: plain JSON.
        assert_eq!(decode_value("k", b"{\"a\":1}"), Ok(&b"{\"a\":1}"[..]));
        assert!(decode_value("k", b"").is_err());
    }

    #[test]
    fn the_watch_window_is_bounded_by_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("api.db")).unwrap();
        let big = "x".repeat(1024 * 1024);
        for i in 0..80 {
            let mut p = pod(&format!("p{i}"));
            p["data"] = json!(big);
            store.create(Resource::Pods, p).unwrap();
        }
        let state = store.state();
        assert!(
            state.history_bytes <= HISTORY_BYTES,
            "{}",
            state.history_bytes
        );
        assert!(state.history.len() < 80 && state.floor > 0);
        drop(state);
        assert_eq!(store.watch(Resource::Pods, 1).unwrap_err().code, 410);
        // A watch gets the very bytes the store made.
        let (replay, _) = store.watch(Resource::Pods, 79).unwrap();
        assert_eq!(
            replay[0].json,
            serde_json::to_vec(&*replay[0].object).unwrap()
        );
    }
}
