//! The pod's `configMap`, `secret`, `downwardAPI` and `projected` volumes, written before its
//! containers start and again whenever what they show changes: a watched object (the node's
//! watch wakes the worker), the pod's labels or annotations, a token near its expiry.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ServiceAccount, Volume};

use super::Worker;
use crate::pod::build::pod_spec;
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
        let started = std::time::Instant::now();
        let mut found = Found::new();
        let mut failure = None;
        let mut unreadable = HashSet::new();
        for v in &volumes {
            for (kind, name) in projected::sources(v) {
                let key = Key {
                    kind,
                    namespace: super::namespace_name(&pod).0.to_owned(),
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
        let facts = self.facts(wants_resources);
        let security = pod_spec(&pod).security_context.as_ref();
        let owner = security.and_then(|s| s.fs_group).map(|gid| Ownership {
            gid: gid as u32,
            read_only: true,
        });
        let node = self.node.clone();
        let paths = &node.ctx.paths;
        let fs_user = fs_user(&pod);
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
                let writing = std::time::Instant::now();
                projected::prepare(&dir)
                    .and_then(|()| projected::write(&dir, &payload, owner))
                    .and_then(|_| {
                        // kubelet's FsUser: the token belongs to the user every container runs
                        // as, so that a 0600/0400 mode still lets the pod read it.
                        let Some(uid) = fs_user else { return Ok(()) };
                        for t in projected::token_sources(v) {
                            let file = dir.join(projected::DATA).join(&t.path);
                            std::os::unix::fs::lchown(file, Some(uid), None)?;
                        }
                        Ok(())
                    })
                    .map_err(|e| format!("write {}: {e}", dir.display()))?;
                tracing::debug!(volume = %v.name, micros = writing.elapsed().as_micros() as u64, "volume written");
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
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "volumes synced"
        );
        match failure {
            None => Ok(()),
            Some(message) => Err(message),
        }
    }

    /// The tokens a projected volume's `serviceAccountToken` sources need, by source index:
    /// asked for with TokenRequest, bound to the pod, and asked for again (kubelet's token
    /// manager) once 80% of their lifetime or 24 hours have passed.
    async fn tokens(&mut self, v: &Volume) -> Result<HashMap<usize, String>, String> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let mut out = HashMap::new();
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for (i, t) in sources.enumerate() {
            let Some(t) = &t.service_account_token else {
                continue;
            };
            let now = Timestamp::now();
            let key = (v.name.clone(), i);
            if let Some(held) = self.tokens.get(&key).filter(|h| now < h.refresh) {
                out.insert(i, held.token.clone());
                continue;
            }
            let Some(client) = self.node.api.get() else {
                return Err("the node has no API server to ask for a service account token".into());
            };
            let (namespace, name) = super::namespace_name(&self.pod);
            let account = pod_spec(&self.pod)
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: t
                        .audience
                        .iter()
                        .filter(|a| !a.is_empty())
                        .cloned()
                        .collect(),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3600)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(name.to_owned()),
                        uid: Some(self.uid.clone()),
                    }),
                },
                ..Default::default()
            };
            let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
            let answer = api
                .create_token_request(&account, &Default::default(), &request)
                .await
                .map_err(|e| format!("failed to fetch token: {}", crate::error_chain(&e)))?;
            let status = answer
                .status
                .ok_or("TokenRequest answered without a token")?;
            let expires = status.expiration_timestamp.0;
            let lifetime = expires.duration_since(now);
            let refresh = now + (lifetime * 4 / 5).min(jiff::SignedDuration::from_hours(24));
            self.tokens.insert(
                key,
                HeldToken {
                    token: status.token.clone(),
                    refresh,
                },
            );
            out.insert(i, status.token);
        }
        Ok(out)
    }

    /// How long until a token must be asked for again, if the pod holds any.
    pub(super) fn next_token_refresh(&self) -> Option<std::time::Duration> {
        let soonest = self.tokens.values().map(|t| t.refresh).min()?;
        let left = soonest.duration_since(Timestamp::now());
        Some(std::time::Duration::try_from(left).unwrap_or_default())
    }
}

/// kubelet's `FsUserFrom`: the user every container (init ones too) runs as, when they all set
/// the same `runAsUser` (container over pod).
fn fs_user(pod: &k8s_openapi::api::core::v1::Pod) -> Option<u32> {
    let spec = pod_spec(pod);
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = crate::pod::status::containers(pod).map(|(c, _)| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_user)
    });
    let first = users.next()??;
    users.all(|u| u == Some(first)).then_some(first as u32)
}

/// A service account token the pod's volume shows, and when to ask for a new one.
pub(super) struct HeldToken {
    token: String,
    refresh: Timestamp,
}
