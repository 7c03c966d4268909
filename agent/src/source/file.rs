//! The static pod source: one Pod per file in a directory, with kubelet's semantics (dot-files and
//! editor leftovers ignored, no recursion, inotify plus a periodic rescan, the node name appended
//! to the pod name, a UID derived from the file when the manifest has none).
//!
//! A file that does not parse or validate is reported once (file, field, reason) and changes
//! nothing: the pod last read from that file keeps running, so a half-saved edit never kills it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::pod::manifest;

use super::Desired;

struct FileState {
    content_hash: String,
    /// The last version of this file that was valid.
    pod: Option<Arc<Pod>>,
}

pub struct FileSource {
    dir: PathBuf,
    node_name: String,
    frequency: Duration,
    files: HashMap<PathBuf, FileState>,
}

/// kubelet ignores dot-files; editors also leave `file~`, `#file#`, `.swp` and friends behind.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || [
            ".swp",
            ".swx",
            ".swo",
            ".tmp",
            ".bak",
            ".orig",
            ".dpkg-new",
            ".dpkg-old",
            ".rpmnew",
            ".rpmsave",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

impl FileSource {
    pub fn new(dir: PathBuf, node_name: String, frequency: Duration) -> Self {
        FileSource {
            dir,
            node_name,
            frequency,
            files: HashMap::new(),
        }
    }

    pub async fn run(mut self, tx: watch::Sender<Desired>) {
        // As kubelet: the directory exists from the start (and is watched from then on).
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "create static pod directory");
        }
        let mut inotify = self.watch();
        loop {
            // An unreadable directory (EMFILE, EIO) says nothing: the pods stay as they are.
            if let Some(desired) = self.scan() {
                tx.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&desired);
                    *current = Some(desired);
                    changed
                });
            }
            let woke = async {
                match &mut inotify {
                    Some(stream) => {
                        stream.next().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woke => {}
                _ = tokio::time::sleep(self.frequency) => {
                    if inotify.is_none() {
                        inotify = self.watch();
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }

    fn watch(&self) -> Option<inotify::EventStream<Vec<u8>>> {
        let inotify = Inotify::init()
            .map_err(|e| warn!(error = %e, "inotify unavailable; rescanning only"))
            .ok()?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        if let Err(e) = inotify.watches().add(&self.dir, mask) {
            warn!(dir = %self.dir.display(), error = %e, "cannot watch static pod directory; will retry");
            return None;
        }
        inotify.into_event_stream(vec![0u8; 4096]).ok()
    }

    /// Reads the directory; returns the pods it now asks for, or `None` when it cannot be read
    /// (a missing directory asks for none).
    fn scan(&mut self) -> Option<BTreeMap<String, Arc<Pod>>> {
        let mut seen = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                // A listing that fails half-way would drop the pods not yet listed.
                let listed: std::io::Result<Vec<PathBuf>> =
                    entries.map(|e| e.map(|e| e.path())).collect();
                let mut paths = match listed {
                    Ok(paths) => paths,
                    Err(e) => {
                        warn!(dir = %self.dir.display(), error = %e, "read static pod directory");
                        return None;
                    }
                };
                paths.sort();
                for path in paths {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if ignored(name) || !path.is_file() {
                        continue;
                    }
                    self.read_file(&path);
                    seen.push(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "read static pod directory");
                return None;
            }
        }
        self.files.retain(|path, _| {
            let keep = seen.contains(path);
            if !keep {
                info!(file = %path.display(), "static pod file removed");
            }
            keep
        });
        let mut desired = BTreeMap::new();
        let mut names: HashMap<(String, String), PathBuf> = HashMap::new();
        let mut files: Vec<(&PathBuf, &FileState)> = self.files.iter().collect();
        files.sort_by_key(|(p, _)| *p);
        for (path, state) in files {
            let Some(pod) = &state.pod else { continue };
            let key = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            if let Some(first) = names.get(&key) {
                if state.pod.is_some() {
                    error!(file = %path.display(), other = %first.display(), "pod {}/{} is already defined; ignoring this file", key.0, key.1);
                }
                continue;
            }
            names.insert(key, path.clone());
            desired.insert(pod.metadata.uid.clone().unwrap_or_default(), pod.clone());
        }
        Some(desired)
    }

    fn read_file(&mut self, path: &Path) {
        let Ok(data) = std::fs::read(path) else {
            return;
        };
        if data.iter().all(u8::is_ascii_whitespace) {
            return; // created but not written yet; its close-after-write event comes next
        }
        let hash = crate::short_hash(&data);
        if self.files.get(path).is_some_and(|s| s.content_hash == hash) {
            return;
        }
        let previous = self.files.remove(path).and_then(|s| s.pod);
        let parsed = manifest::parse(&data).and_then(|pod| {
            let pod = self.apply_defaults(pod, path, &data);
            manifest::validate(&pod)?;
            if let Some(what) = manifest::api_references(&pod) {
                return Err(manifest::field_err(
                    "spec",
                    format!("Forbidden: a static pod may not reference {what} (its node may have no API server to read them from)"),
                ));
            }
            Ok(pod)
        });
        let pod = match parsed {
            Ok(pod) => {
                info!(file = %path.display(), pod = pod.metadata.name.as_deref().unwrap_or_default(), "static pod read");
                Some(Arc::new(pod))
            }
            Err(e) => {
                error!(file = %path.display(), field = %e.field, reason = %e.reason, "invalid static pod manifest {}: {e}", path.display());
                previous
            }
        };
        self.files.insert(
            path.to_owned(),
            FileState {
                content_hash: hash,
                pod,
            },
        );
    }

    /// kubelet's `applyDefaults` for file sources.
    fn apply_defaults(&self, mut pod: Pod, path: &Path, data: &[u8]) -> Pod {
        let meta = &mut pod.metadata;
        if meta.uid.as_deref().is_none_or(str::is_empty) {
            let mut input = data.to_vec();
            input.extend_from_slice(
                format!("host:{}file:{}", self.node_name, path.display()).as_bytes(),
            );
            meta.uid = Some(
                crate::short_hash(&input) + &crate::short_hash(path.as_os_str().as_encoded_bytes()),
            );
        }
        if let Some(name) = &meta.name {
            if !name.is_empty() {
                meta.name = Some(format!("{name}-{}", self.node_name));
            }
        }
        meta.namespace.get_or_insert_with(|| "default".into());
        meta.creation_timestamp = Some(Time(Timestamp::now()));
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert("kubernetes.io/config.source".into(), "file".into());
        annotations.insert(
            "kubernetes.io/config.hash".into(),
            meta.uid.clone().unwrap_or_default(),
        );
        annotations.insert(
            "kubernetes.io/config.seen".into(),
            Timestamp::now().to_string(),
        );
        if let Some(spec) = &mut pod.spec {
            spec.node_name = Some(self.node_name.clone());
            spec.restart_policy.get_or_insert_with(|| "Always".into());
            spec.termination_grace_period_seconds.get_or_insert(30);
            spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        }
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_leftovers_are_ignored() {
        for name in [
            ".web.yaml",
            "web.yaml~",
            "#web.yaml#",
            "web.yaml.swp",
            "web.yaml.bak",
            "web.yaml.tmp",
        ] {
            assert!(ignored(name), "{name}");
        }
        for name in ["web.yaml", "web.json", "web", "my.pod.yml"] {
            assert!(!ignored(name), "{name}");
        }
    }

    #[test]
    fn scan_keeps_last_good_version_and_drops_removed_files() {
        let dir = std::env::temp_dir().join(format!("nodelet-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut src = FileSource::new(dir.clone(), "node1".into(), Duration::from_secs(20));
        let good = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a, image: busybox}]}\n";
        std::fs::write(dir.join("web.yaml"), good).unwrap();
        std::fs::write(dir.join(".hidden.yaml"), good).unwrap();
        let first = src.scan().unwrap();
        assert_eq!(first.len(), 1);
        let pod = first.values().next().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(pod.metadata.uid.as_ref().unwrap().len(), 32);

        std::fs::write(
            dir.join("web.yaml"),
            "metadata: {name: web}\nspec: {containers: [{name: a}]}\n",
        )
        .unwrap();
        std::fs::write(dir.join("bad.yaml"), "{{{").unwrap();
        let second = src.scan().unwrap();
        assert_eq!(
            second, first,
            "an invalid edit keeps the running version; a bad file adds nothing"
        );

        // (A directory that cannot be read says nothing: see the descriptor exhaustion fault
        // test.) A missing one asks for no pods.
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert!(src.scan().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(src.scan(), Some(BTreeMap::new()));
    }
}
