//! The pod's `configMap`, `secret`, `downwardAPI` and `projected` volumes, written before its
//! containers start and again whenever what they show changes: a watched object (the node's
//! watch wakes the worker), the pod's labels or annotations, a token near its expiry.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use super::Worker;
use crate::pod::build::{self, pod_spec};
use crate::pod::objects::{self, Key};
use crate::pod::projected::{self, Found, Inputs, Ownership};

impl Worker {
    /// Tells the node's watches which objects this pod uses (none once it is gone).
    pub(super) fn use_objects(&self, keys: &HashSet<Key>) {
        let client = self.node.api.get();
        self.node
            .objects
            .use_objects(client, &self.uid, &self.objects_changed, keys);
    }

    /// Writes each API volume whose payload changed since it was last written. The error is
    /// kubelet's `FailedMount` message for the first volume that cannot be set up; the others
    /// are still brought up to date.
    pub(super) async fn sync_volumes(&mut self) -> Result<(), String> {
        let pod = self.pod.clone();
        let volumes: Vec<_> = pod_spec(&pod)
            .volumes
            .iter()
            .flatten()
            .filter(|v| projected::is_api_volume(v))
            .collect();
        let keys = objects::pod_keys(&pod);
        self.use_objects(&keys);
        if volumes.is_empty() {
            return Ok(());
        }
        let mut found = Found::new();
        let mut failure = None;
        let mut unreadable = HashSet::new();
        for v in &volumes {
            for (kind, name) in projected::sources(v) {
                let key = Key {
                    kind,
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: name.to_owned(),
                };
                if found.contains_key(&(kind, key.name.clone())) {
                    continue;
                }
                let Some(client) = self.node.api.get() else {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume {:?} : {kind} {name:?}: the node has no API server to read it from",
                        v.name
                    ));
                };
                match self.node.objects.get(client, &key).await {
                    Ok(object) => {
                        found.insert((kind, key.name), object);
                    }
                    // Unreadable now: the volume keeps what it shows (kubelet does too).
                    Err(e) => {
                        unreadable.insert(v.name.clone());
                        failure.get_or_insert(format!(
                            "MountVolume.SetUp failed for volume {:?} : {e}",
                            v.name
                        ));
                    }
                }
            }
        }
        let wants_resources = volumes.iter().any(|v| {
            let direct = v.downward_api.iter().flat_map(|d| d.items.iter().flatten());
            let projected = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
            let projected = projected
                .flat_map(|s| s.downward_api.iter().flat_map(|d| d.items.iter().flatten()));
            direct
                .chain(projected)
                .any(|i| i.resource_field_ref.is_some())
        });
        let (allocatable_millicpu, allocatable_memory, allocatable_storage) = if wants_resources {
            build::node_allocatable(&self.node.ctx.paths.root)
        } else {
            (0, 0, 0)
        };
        let facts = build::Facts {
            pod_ip: self.observed.pod_ip.map(|ip| ip.to_string()),
            host_ip: self.observed.host_ip.clone(),
            allocatable_millicpu,
            allocatable_memory,
            allocatable_storage,
            ..Default::default()
        };
        let security = pod_spec(&pod).security_context.as_ref();
        let owner = security.and_then(|s| s.fs_group).map(|gid| Ownership {
            gid: gid as u32,
            read_only: true,
        });
        let node = self.node.clone();
        let paths = &node.ctx.paths;
        for v in volumes
            .into_iter()
            .filter(|v| !unreadable.contains(&v.name))
        {
            let tokens = match self.tokens(v).await {
                Ok(tokens) => tokens,
                Err(e) => {
                    failure.get_or_insert(format!(
                        "MountVolume.SetUp failed for volume {:?} : {e}",
                        v.name
                    ));
                    continue;
                }
            };
            let inputs = Inputs {
                pod: &pod,
                facts: &facts,
                found: &found,
                tokens: &tokens,
            };
            let written = projected::payload(v, &inputs).and_then(|payload| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                payload.hash(&mut hasher);
                let hash = hasher.finish();
                if self.written.get(&v.name) == Some(&hash) {
                    return Ok(());
                }
                let dir = paths.volume_dir(&self.uid, projected::plugin(v), &v.name);
                projected::prepare(&dir, v)
                    .and_then(|()| projected::write(&dir, &payload, owner))
                    .map_err(|e| format!("write {}: {e}", dir.display()))?;
                self.written.insert(v.name.clone(), hash);
                Ok(())
            });
            if let Err(e) = written {
                failure.get_or_insert(format!(
                    "MountVolume.SetUp failed for volume {:?} : {e}",
                    v.name
                ));
            }
        }
        match failure {
            None => Ok(()),
            Some(message) => Err(message),
        }
    }

    /// The tokens a projected volume's `serviceAccountToken` sources need, by source index.
    async fn tokens(
        &mut self,
        v: &k8s_openapi::api::core::v1::Volume,
    ) -> Result<HashMap<usize, String>, String> {
        if !projected::has_token(v) {
            return Ok(HashMap::new());
        }
        Err("serviceAccountToken projections are not supported yet".into())
    }
}
