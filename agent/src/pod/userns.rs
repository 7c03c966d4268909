//! User namespaces for `hostUsers: false` pods, allocated as kubelet's userns manager does: each
//! pod gets 65,536 node ids of its own (ids 0-65535 inside), from the range of the `kubelet`
//! entry of /etc/subuid and /etc/subgid when there is one, else from 65536 up; the allocation is
//! kept in the pod's directory (`<rootDir>/pods/<uid>/userns`, kubelet's file and format), so
//! it survives agent restarts and is freed with the directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nodelet_sandbox::spec::IdMap;
use serde::{Deserialize, Serialize};

/// Ids per pod (kubelet's `userNsLength`).
pub const IDS_PER_POD: u32 = 1 << 16;

/// kubelet's default range without a `kubelet` subordinate id entry: everything from 65536.
const DEFAULT_FIRST: u32 = 1 << 16;
const DEFAULT_LENGTH: u64 = (1u64 << 32) - DEFAULT_FIRST as u64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Range { path: PathBuf, message: String },
    #[error("no user namespace left: all {0} of the node's ranges are in use")]
    Exhausted(u64),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a user namespace record")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// kubelet's `userns` file.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Record {
    uid_mappings: Vec<Mapping>,
    gid_mappings: Vec<Mapping>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    host_id: u32,
    container_id: u32,
    length: u32,
}

impl Record {
    fn new(map: IdMap) -> Self {
        let one = || {
            vec![Mapping {
                host_id: map.host_id,
                container_id: 0,
                length: map.size,
            }]
        };
        Record {
            uid_mappings: one(),
            gid_mappings: one(),
        }
    }

    /// The one mapping nodelet makes (uids and gids alike, from container id 0).
    fn map(&self) -> Option<IdMap> {
        match (&self.uid_mappings[..], &self.gid_mappings[..]) {
            ([u], [g]) if u == g && u.container_id == 0 => Some(IdMap {
                host_id: u.host_id,
                size: u.length,
            }),
            _ => None,
        }
    }
}

/// The node ids user namespaces are made from: `first` and how many, a multiple of 65536.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub first: u32,
    pub length: u64,
}

/// The range of the `kubelet` entry in /etc/subuid and /etc/subgid (which must agree), or the
/// default, as kubelet reads it.
pub fn node_range(subuid: &Path, subgid: &Path) -> Result<Range, Error> {
    let entry = |path: &Path| -> Result<Option<(u32, u64)>, Error> {
        let Some(data) = read_if_there(path)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&data);
        let bad = |message: String| Error::Range {
            path: path.to_owned(),
            message,
        };
        for line in text.lines() {
            let mut parts = line.trim().split(':');
            if parts.next() != Some("kubelet") {
                continue;
            }
            let (Some(first), Some(length), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(format!("malformed kubelet entry {line:?}")));
            };
            let (Ok(first), Ok(length)) = (first.parse::<u32>(), length.parse::<u64>()) else {
                return Err(bad(format!("malformed kubelet entry {line:?}")));
            };
            if first % IDS_PER_POD != 0 || length % IDS_PER_POD as u64 != 0 || length == 0 {
                return Err(bad(format!(
                    "the kubelet range {first}:{length} must start at and span a multiple of 65536"
                )));
            }
            return Ok(Some((first, length)));
        }
        Ok(None)
    };
    match (entry(subuid)?, entry(subgid)?) {
        (None, None) => Ok(Range {
            first: DEFAULT_FIRST,
            length: DEFAULT_LENGTH,
        }),
        (Some(u), Some(g)) if u == g => Ok(Range {
            first: u.0,
            length: u.1,
        }),
        (u, g) => Err(Error::Range {
            path: subgid.to_owned(),
            message: format!(
                "the kubelet entries of {} ({u:?}) and {} ({g:?}) must be the same range",
                subuid.display(),
                subgid.display()
            ),
        }),
    }
}

/// Whether this kernel makes what a user-namespaced pod needs: idmapped overlayfs layers
/// (5.19) and idmapped tmpfs (6.3, for memory-backed and API volumes), as Kubernetes requires.
pub fn kernel_supports(release: &str) -> Result<(), String> {
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (6, 3) {
        Ok(())
    } else {
        Err(format!(
            "hostUsers: false needs Linux 6.3 or newer (idmapped overlayfs layers and tmpfs); this node runs {release}"
        ))
    }
}

/// One allocation at a time across the node's pod workers.
static ALLOCATING: Mutex<()> = Mutex::new(());

/// The pod's user namespace: the one recorded in its directory, or a free range, recorded
/// (atomically) before it is used.
pub fn allocate(pods_root: &Path, uid: &str, range: Range) -> Result<IdMap, Error> {
    let _one = ALLOCATING.lock().unwrap_or_else(|e| e.into_inner());
    let path = pods_root.join(uid).join("userns");
    if let Some(map) = read(&path)? {
        return Ok(map);
    }
    let mut used = BTreeSet::new();
    if let Ok(dirs) = std::fs::read_dir(pods_root) {
        for d in dirs.flatten() {
            // A record that cannot be read still holds its range (it is not reused blindly).
            if let Ok(Some(map)) = read(&d.path().join("userns")) {
                used.insert(map.host_id);
            }
        }
    }
    let blocks = range.length / IDS_PER_POD as u64;
    let host_id = (0..blocks)
        .map(|k| range.first as u64 + k * IDS_PER_POD as u64)
        .find(|id| !used.contains(&(*id as u32)) && *id + IDS_PER_POD as u64 <= 1 << 32)
        .ok_or(Error::Exhausted(blocks))? as u32;
    let map = IdMap {
        host_id,
        size: IDS_PER_POD,
    };
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let data = serde_json::to_vec(&Record::new(map)).expect("a record serialises");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(map)
}

/// A file's bytes, `None` when it does not exist.
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Option<IdMap>, Error> {
    let Some(data) = read_if_there(path)? else {
        return Ok(None);
    };
    let record: Record = serde_json::from_slice(&data).map_err(|source| Error::Record {
        path: path.to_owned(),
        source,
    })?;
    record.map().map(Some).ok_or_else(|| Error::Range {
        path: path.to_owned(),
        message: "not one mapping of uids and gids from 0".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_distinct_ranges_that_stay_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let range = Range {
            first: 65536,
            length: 3 * 65536,
        };
        for uid in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.path().join(uid)).unwrap();
        }
        let a = allocate(dir.path(), "a", range).unwrap();
        let b = allocate(dir.path(), "b", range).unwrap();
        assert_eq!((a.host_id, b.host_id, a.size), (65536, 131072, 65536));
        assert_eq!(allocate(dir.path(), "a", range).unwrap(), a, "kept");
        let text = std::fs::read_to_string(dir.path().join("a/userns")).unwrap();
        assert_eq!(
            text,
            r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":65536}],"gidMappings":[{"hostId":65536,"containerId":0,"length":65536}]}"#
        );
        allocate(dir.path(), "c", range).unwrap();
        std::fs::create_dir_all(dir.path().join("d")).unwrap();
        assert!(matches!(
            allocate(dir.path(), "d", range),
            Err(Error::Exhausted(3))
        ));
        // A deleted pod's directory frees its range.
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        assert_eq!(allocate(dir.path(), "d", range).unwrap().host_id, 65536);
    }

    #[test]
    fn user_namespaces_need_linux_6_3() {
        assert!(kernel_supports("6.18.0-1-amd64").is_ok());
        assert!(kernel_supports("6.3.0").is_ok());
        let e = kernel_supports("5.15.0-91-generic").unwrap_err();
        assert!(
            e.contains("Linux 6.3") && e.contains("5.15.0-91-generic"),
            "{e}"
        );
    }

    #[test]
    fn the_range_is_the_kubelet_subordinate_ids_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (u, g) = (dir.path().join("subuid"), dir.path().join("subgid"));
        assert_eq!(
            node_range(&u, &g).unwrap(),
            Range {
                first: 65536,
                length: (1 << 32) - 65536
            }
        );
        std::fs::write(&u, "alice:100000:65536\nkubelet:655360:262144\n").unwrap();
        std::fs::write(&g, "kubelet:655360:262144\n").unwrap();
        assert_eq!(
            node_range(&u, &g).unwrap(),
            Range {
                first: 655360,
                length: 262144
            }
        );
        std::fs::write(&g, "kubelet:655360:65536\n").unwrap();
        assert!(node_range(&u, &g)
            .unwrap_err()
            .to_string()
            .contains("must be the same range"));
        std::fs::write(&u, "kubelet:100000:65536\n").unwrap();
        assert!(node_range(&u, &g)
            .unwrap_err()
            .to_string()
            .contains("multiple of 65536"));
    }
}
