//! Volumes whose files the node writes from the API: `configMap`, `secret`, `downwardAPI` and
//! `projected` (kubelet's plugins of those names). Their content is a payload (path → bytes and
//! mode) written by kubelet's atomic writer:
//!
//! ```text
//!  <volume>/..2026_12_01_15_04_05.123456789/key   the payload, in a timestamped directory
//!  <volume>/..data -> ..2026_12_01_15_04_05.123456789   swapped by rename(2): one step
//!  <volume>/key -> ..data/key                     what the container opens
//! ```
//!
//! A reader inside the container sees the old payload or the new one, never a mix. Every such
//! volume is a tmpfs mount (see `prepare`), so secrets never reach the node's disk.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection, Volume,
};

use super::build::Facts;
use super::manifest::{field_err, FieldError};
use super::objects::{Kind, Object};

pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const DEFAULT_MODE: i32 = 0o644;

/// A volume's files: relative path → (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// The objects a pod's volumes read, by kind and name (`None`: there is no such object).
pub type Found = HashMap<(Kind, String), Option<Arc<Object>>>;

/// Whether the node writes this volume's files from the API.
pub fn is_api_volume(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// The plugin directory name kubelet uses for the volume's type.
pub fn plugin(v: &Volume) -> &'static str {
    if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else {
        "kubernetes.io~projected"
    }
}

/// The ConfigMaps and Secrets a volume reads.
pub fn sources(v: &Volume) -> impl Iterator<Item = (Kind, &str)> {
    let direct = [
        v.config_map
            .as_ref()
            .map(|c| (Kind::ConfigMap, c.name.as_str())),
        v.secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            .map(|n| (Kind::Secret, n)),
    ];
    let projected = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
    let projected = projected.flat_map(|s| {
        [
            s.config_map
                .as_ref()
                .map(|c| (Kind::ConfigMap, c.name.as_str())),
            s.secret.as_ref().map(|c| (Kind::Secret, c.name.as_str())),
        ]
    });
    direct.into_iter().chain(projected).flatten()
}

pub fn token_sources(v: &Volume) -> impl Iterator<Item = &ServiceAccountTokenProjection> {
    let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
    sources.filter_map(|s| s.service_account_token.as_ref())
}

/// What a volume needs besides the objects: the downward API's facts and the tokens.
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub facts: &'a Facts,
    pub found: &'a Found,
    /// The token for a `serviceAccountToken` source, by its index among the volume's sources.
    pub tokens: &'a HashMap<usize, String>,
}

/// The volume's payload, as kubelet's `MakePayload` (configMap, secret), `CollectData`
/// (downwardAPI) and `collectData` (projected) make it. The error is kubelet's `SetUp` message.
pub fn payload(v: &Volume, inputs: &Inputs<'_>) -> Result<Payload, String> {
    let mut out = Payload::new();
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(DEFAULT_MODE);
        let (items, optional) = (c.items.as_deref(), c.optional);
        from_source(
            &mut out,
            inputs.found,
            Kind::ConfigMap,
            &c.name,
            items,
            mode,
            optional,
        )?;
    } else if let Some(c) = &v.secret {
        let mode = c.default_mode.unwrap_or(DEFAULT_MODE);
        let name = c.secret_name.as_deref().unwrap_or_default();
        let (items, optional) = (c.items.as_deref(), c.optional);
        from_source(
            &mut out,
            inputs.found,
            Kind::Secret,
            name,
            items,
            mode,
            optional,
        )?;
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(DEFAULT_MODE);
        downward(&mut out, d.items.iter().flatten(), mode, inputs)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        for (i, s) in p.sources.iter().flatten().enumerate() {
            if let Some(c) = &s.config_map {
                let (items, optional) = (c.items.as_deref(), c.optional);
                from_source(
                    &mut out,
                    inputs.found,
                    Kind::ConfigMap,
                    &c.name,
                    items,
                    mode,
                    optional,
                )?;
            }
            if let Some(c) = &s.secret {
                let (items, optional) = (c.items.as_deref(), c.optional);
                from_source(
                    &mut out,
                    inputs.found,
                    Kind::Secret,
                    &c.name,
                    items,
                    mode,
                    optional,
                )?;
            }
            if let Some(d) = &s.downward_api {
                downward(&mut out, d.items.iter().flatten(), mode, inputs)?;
            }
            if let Some(t) = &s.service_account_token {
                let token = inputs
                    .tokens
                    .get(&i)
                    .ok_or_else(|| format!("no token for {:?} yet", t.path))?;
                out.insert(t.path.clone(), (token.clone().into_bytes(), mode as u32));
            }
        }
    }
    Ok(out)
}

/// One ConfigMap or Secret into the payload: every key, or the `items` asked for. A missing
/// object or key is an error unless `optional`.
fn from_source(
    out: &mut Payload,
    found: &Found,
    kind: Kind,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: Option<bool>,
) -> Result<(), String> {
    let optional = optional == Some(true);
    let object = match found.get(&(kind, name.to_owned())) {
        Some(Some(object)) => object,
        _ if optional => return Ok(()),
        _ => return Err(format!("{kind} {name:?} not found")),
    };
    let files: BTreeMap<&str, &[u8]> = object.files().collect();
    match items {
        None | Some([]) => {
            for (key, data) in files {
                out.insert(key.to_owned(), (data.to_vec(), default_mode as u32));
            }
        }
        Some(items) => {
            for item in items {
                let Some(data) = files.get(item.key.as_str()) else {
                    if optional {
                        continue;
                    }
                    return Err(format!(
                        "{kind} references non-existent {kind} key: {}",
                        item.key
                    ));
                };
                let mode = item.mode.unwrap_or(default_mode) as u32;
                out.insert(item.path.clone(), (data.to_vec(), mode));
            }
        }
    }
    Ok(())
}

fn downward<'a>(
    out: &mut Payload,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    default_mode: i32,
    inputs: &Inputs<'_>,
) -> Result<(), String> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            super::build::field_value(inputs.pod, &f.field_path, inputs.facts)
                .ok_or_else(|| format!("unsupported fieldRef {:?}", f.field_path))?
        } else if let Some(r) = &item.resource_field_ref {
            // A volume names its container (validation requires it).
            let own = super::status::containers(inputs.pod)
                .map(|(c, _)| c)
                .find(|c| Some(c.name.as_str()) == r.container_name.as_deref())
                .ok_or_else(|| format!("container {:?} not found", r.container_name))?;
            super::build::resource_value(inputs.pod, own, r, inputs.facts)?
        } else {
            continue;
        };
        let mode = item.mode.unwrap_or(default_mode) as u32;
        out.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

/// kube-apiserver's checks of a configMap, secret, downwardAPI or projected volume.
pub fn validate(path: &str, v: &Volume) -> Result<(), FieldError> {
    let mode = |field: String, mode: Option<i32>| check_mode(&field, mode);
    let items = |field: String, items: Option<&Vec<KeyToPath>>| {
        for (i, item) in items.into_iter().flatten().enumerate() {
            let field = format!("{field}.items[{i}]");
            if item.key.is_empty() {
                return Err(field_err(format!("{field}.key"), "Required value"));
            }
            check_path(&format!("{field}.path"), &item.path)?;
            mode(format!("{field}.mode"), item.mode)?;
        }
        Ok(())
    };
    let name = |field: String, name: &str| {
        if name.is_empty() {
            return Err(field_err(field, "Required value"));
        }
        super::manifest::check_subdomain(&field, name)
    };
    if let Some(c) = &v.config_map {
        let field = format!("{path}.configMap");
        name(format!("{field}.name"), &c.name)?;
        mode(format!("{field}.defaultMode"), c.default_mode)?;
        items(field, c.items.as_ref())?;
    } else if let Some(s) = &v.secret {
        let field = format!("{path}.secret");
        name(
            format!("{field}.secretName"),
            s.secret_name.as_deref().unwrap_or_default(),
        )?;
        mode(format!("{field}.defaultMode"), s.default_mode)?;
        items(field, s.items.as_ref())?;
    } else if let Some(d) = &v.downward_api {
        let field = format!("{path}.downwardAPI");
        mode(format!("{field}.defaultMode"), d.default_mode)?;
        validate_downward(&field, d.items.iter().flatten())?;
    } else if let Some(p) = &v.projected {
        let field = format!("{path}.projected");
        mode(format!("{field}.defaultMode"), p.default_mode)?;
        let mut paths: Vec<String> = Vec::new();
        for (i, s) in p.sources.iter().flatten().enumerate() {
            let field = format!("{field}.sources[{i}]");
            let set = [
                s.config_map.is_some(),
                s.secret.is_some(),
                s.downward_api.is_some(),
                s.service_account_token.is_some(),
                s.cluster_trust_bundle.is_some(),
            ];
            match set.iter().filter(|s| **s).count() {
                0 => return Err(field_err(field, "Required value: must specify exactly 1 of configMap, secret, downwardAPI, serviceAccountToken or clusterTrustBundle")),
                1 => {}
                _ => return Err(field_err(field, "Forbidden: may not specify more than 1 volume type per source")),
            }
            if s.cluster_trust_bundle.is_some() {
                return Err(field_err(format!("{field}.clusterTrustBundle"), "Forbidden: clusterTrustBundle projections need the ClusterTrustBundle API, which nodelet does not serve"));
            }
            if let Some(c) = &s.config_map {
                name(format!("{field}.configMap.name"), &c.name)?;
                items(format!("{field}.configMap"), c.items.as_ref())?;
                paths.extend(c.items.iter().flatten().map(|i| i.path.clone()));
            }
            if let Some(c) = &s.secret {
                name(format!("{field}.secret.name"), &c.name)?;
                items(format!("{field}.secret"), c.items.as_ref())?;
                paths.extend(c.items.iter().flatten().map(|i| i.path.clone()));
            }
            if let Some(d) = &s.downward_api {
                validate_downward(&format!("{field}.downwardAPI"), d.items.iter().flatten())?;
                paths.extend(d.items.iter().flatten().map(|i| i.path.clone()));
            }
            if let Some(t) = &s.service_account_token {
                let field = format!("{field}.serviceAccountToken");
                check_path(&format!("{field}.path"), &t.path)?;
                if let Some(e) = t.expiration_seconds {
                    if e < 600 {
                        return Err(field_err(format!("{field}.expirationSeconds"), format!("Invalid value: {e}: may not specify a duration less than 10 minutes")));
                    }
                    if e > 1 << 32 {
                        return Err(field_err(format!("{field}.expirationSeconds"), format!("Invalid value: {e}: may not specify a duration larger than 2^32 seconds")));
                    }
                }
                paths.push(t.path.clone());
            }
        }
        paths.sort();
        if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
            return Err(field_err(
                format!("{field}.sources"),
                format!("Invalid value: {:?}: conflicting duplicate paths", w[0]),
            ));
        }
    }
    Ok(())
}

/// The fields a downwardAPI volume may project (`validVolumeDownwardAPIFieldPathExpressions`,
/// and `metadata.labels['k']`/`metadata.annotations['k']`).
const VOLUME_FIELDS: [&str; 5] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.labels",
    "metadata.annotations",
    "metadata.uid",
];

fn validate_downward<'a>(
    field: &str,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
) -> Result<(), FieldError> {
    for (i, item) in items.enumerate() {
        let field = format!("{field}.items[{i}]");
        check_path(&format!("{field}.path"), &item.path)?;
        check_mode(&format!("{field}.mode"), item.mode)?;
        match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => {
                let field = format!("{field}.fieldRef.fieldPath");
                super::manifest::check_field_ref(&field, &f.field_path, &VOLUME_FIELDS)?;
            }
            (None, Some(r)) => {
                if r.container_name.as_deref().is_none_or(str::is_empty) {
                    return Err(field_err(format!("{field}.resourceFieldRef.containerName"), "Required value"));
                }
            }
            (Some(_), Some(_)) => return Err(field_err(field, "Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously")),
            (None, None) => return Err(field_err(field, "Required value: one of fieldRef and resourceFieldRef is required")),
        }
    }
    Ok(())
}

/// A file mode: 0 to 0777.
fn check_mode(field: &str, mode: Option<i32>) -> Result<(), FieldError> {
    match mode {
        Some(m) if !(0..=0o777).contains(&m) => Err(field_err(
            field,
            format!(
                "Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"
            ),
        )),
        _ => Ok(()),
    }
}

/// kube-apiserver's `validateLocalDescendingPath`: relative, no `..` component, not starting
/// with `..` (the writer's own names).
pub fn check_path(field: &str, path: &str) -> Result<(), FieldError> {
    if path.is_empty() {
        return Err(field_err(field, "Required value"));
    }
    super::manifest::check_descending(field, path)?;
    if path.starts_with("..") {
        return Err(field_err(
            field,
            format!("Invalid value: {path:?}: must not start with '..'"),
        ));
    }
    Ok(())
}

/// The group that owns a volume's files (the pod's `fsGroup`) and whether the files are
/// read-only to the pod, as kubelet's `SetVolumeOwnership` applies them.
#[derive(Clone, Copy, Debug)]
pub struct Ownership {
    pub gid: u32,
    pub read_only: bool,
}

impl Ownership {
    /// A file's or directory's mode once the group may read (and write) it.
    fn mode(self, mode: u32, dir: bool) -> u32 {
        let mut mask = if self.read_only { 0o440 } else { 0o660 };
        if dir {
            mask |= 0o2000 | 0o110;
        }
        mode | mask
    }

    /// Gives the group every file and directory under `root` (symlinks are not followed),
    /// with its permission bits added; `OnRootMismatch` skips a tree whose root already has them.
    pub fn apply(self, root: &Path, only_on_root_mismatch: bool) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(root)?;
        if only_on_root_mismatch
            && meta.gid() == self.gid
            && meta.mode() & 0o7777 == self.mode(meta.mode() & 0o7777, true)
        {
            return Ok(());
        }
        self.apply_one(root, &meta)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(root)? {
                self.apply(&entry?.path(), false)?;
            }
        }
        Ok(())
    }

    fn apply_one(self, path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        std::os::unix::fs::lchown(path, None, Some(self.gid))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = self.mode(meta.mode() & 0o7777, meta.is_dir());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

/// Creates the volume's directory, mode 0777 as kubelet's wrapped emptyDir, on the node's tmpfs
/// for API volumes (`NodePaths::api_volumes`, mounted at start by `volumes::mount_api_volumes`):
/// kubelet backs secret and projected volumes with memory so that secrets never reach the disk;
/// nodelet backs configMap and downwardAPI ones too (kubelet keeps them on disk), since their
/// content is small and comes from the API again at every start, and a write to tmpfs costs a
/// fraction of a journaled one (`make bench`, BENCH=config).
pub fn prepare(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// kubelet's `AtomicWriter.Write`: makes `dir` show `payload`, in one visible step. Returns
/// whether anything changed (an unchanged payload writes nothing).
pub fn write(dir: &Path, payload: &Payload, owner: Option<Ownership>) -> io::Result<bool> {
    for path in payload.keys() {
        let clean = Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !clean || path.starts_with("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("payload path {path:?} is not a relative path inside the volume"),
            ));
        }
    }
    let old = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(old) = &old {
        if same_payload(&dir.join(old), payload, owner)? {
            return Ok(false);
        }
    }
    let (name, staging) = new_staging(dir)?;
    for (path, (data, mode)) in payload {
        let file = staging.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)?;
        io::Write::write_all(&mut f, data)?;
        f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
    }
    if let Some(owner) = owner {
        owner.apply(&staging, false)?;
    }
    // The names the container sees: `key -> ..data/key`, for each top-level entry.
    let tops: std::collections::BTreeSet<&str> = payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for top in &tops {
        let visible = dir.join(top);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(top), &visible)?;
        }
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // What the previous payload had and this one has not.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if n.starts_with("..") {
            if n != DATA && *n != *name && n != DATA_TMP {
                std::fs::remove_dir_all(entry.path())?;
            }
        } else if !tops.contains(n) {
            // Only the names an earlier payload made (symlinks through ..data): a directory a
            // subPath mount created for a key that did not exist is left alone, as kubelet's
            // writer removes only the old payload's paths.
            let ours = std::fs::read_link(entry.path()).is_ok_and(|t| t.starts_with(DATA));
            if ours {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(true)
}

/// A new timestamped directory for a payload (`..2026_12_01_15_04_05.123456789`).
fn new_staging(dir: &Path) -> io::Result<(String, PathBuf)> {
    let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
    let stamp = now.strftime("..%Y_%m_%d_%H_%M_%S").to_string();
    for n in 0..100u32 {
        let name = format!("{stamp}.{:09}", now.subsec_nanosecond() as u32 + n);
        let path = dir.join(&name);
        match std::fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                return Ok((name, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free payload directory name",
    ))
}

/// Whether the payload directory holds exactly this payload (content and modes).
fn same_payload(staging: &Path, payload: &Payload, owner: Option<Ownership>) -> io::Result<bool> {
    let mut count = 0;
    if !count_files(staging, &mut count)? || count != payload.len() {
        return Ok(false);
    }
    for (path, (data, mode)) in payload {
        let file = staging.join(path);
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            return Ok(false);
        };
        let mode = owner.map_or(*mode, |o| o.mode(*mode, false));
        if !meta.is_file() || meta.mode() & 0o7777 != mode || meta.len() != data.len() as u64 {
            return Ok(false);
        }
        if std::fs::read(&file)? != *data {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Counts the regular files under `dir`; false when the directory is not there.
fn count_files(dir: &Path, count: &mut usize) -> io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count_files(&entry.path(), count)?;
        } else {
            *count += 1;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| (p.to_string(), (d.as_bytes().to_vec(), *m)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(write(
            d,
            &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]),
            None
        )
        .unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(d.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = std::fs::metadata(d.join("sub/b")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let first = std::fs::read_link(d.join(DATA)).unwrap();
        // Unchanged: nothing is written.
        assert!(!write(
            d,
            &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]),
            None
        )
        .unwrap());
        assert_eq!(std::fs::read_link(d.join(DATA)).unwrap(), first);
        // Changed: a new directory, the old one and the dropped name gone.
        assert!(write(d, &payload(&[("a", "3", 0o644)]), None).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(d.join("sub")).is_err());
        assert!(!d.join(&first).exists());
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn atomic_writer_refuses_escaping_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "..data/x", "a/../../x"] {
            assert!(
                write(dir.path(), &payload(&[(bad, "x", 0o644)]), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_are_checked_as_kube_apiserver_does() {
        assert!(check_path("p", "a/b").is_ok());
        for bad in ["", "/a", "a/../b", "..a"] {
            assert!(check_path("p", bad).is_err(), "{bad}");
        }
    }
}
