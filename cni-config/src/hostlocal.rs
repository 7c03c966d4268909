//! IP allocation compatible with the reference host-local plugin, on the same files: one file per
//! allocated IP created with O_EXCL (creating it *is* the reservation) holding `id\r\nifname`,
//! `last_reserved_ip.<set>` for round robin, and an flock(2)ed `lock`, so nodelet and the plugin
//! can share a directory without ever handing out one address twice (cni.md §3).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{add, HostLocal, IpRange};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate { ip: IpAddr, id: String },
    #[error(
        "failed to allocate for range {set}: no IP addresses available in range set: {ranges}"
    )]
    Exhausted { set: usize, ranges: String },
}

/// Who holds an address: a container id and, for files written since plugins v0.8.0, its interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub id: String,
    pub ifname: Option<String>,
}

impl Attachment {
    fn parse(content: &str) -> Attachment {
        match content.trim().split_once("\r\n") {
            Some((id, ifname)) => Attachment {
                id: id.trim().to_owned(),
                ifname: Some(ifname.trim().to_owned()),
            },
            None => Attachment {
                id: content.trim().to_owned(),
                ifname: None,
            },
        }
    }
}

/// One address handed out, with what the interface needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: IpAddr,
}

/// Where allocations live. The disk store is host-local's; tests use a fake.
pub trait Store {
    /// Runs `f` while holding the store's exclusive lock.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error>;
    /// Creates the reservation; `false` if the address is already taken.
    fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set: usize) -> Result<bool, Error>;
    fn last_reserved(&self, set: usize) -> Option<IpAddr>;
    fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, Error>;
    fn release(&self, ip: IpAddr) -> Result<(), Error>;

    /// The allocations `id` may hold: those written for (id, ifname), or in the legacy id-only
    /// form. Stores may skip reading what cannot match.
    fn held_by(&self, id: &str, ifname: &str) -> Result<Vec<(IpAddr, Attachment)>, Error> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, a)| a.id == id.trim() && a.ifname.as_deref().is_none_or(|i| i == ifname))
            .collect())
    }
}

/// `<dataDir>/<network name>/`, byte for byte as host-local writes it.
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, Error> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(DiskStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl DiskStore {
    /// Every allocation file (named after an IP) whose size passes `size_ok`, with its holder.
    fn read_allocations(
        &self,
        size_ok: impl Fn(u64) -> bool,
    ) -> Result<Vec<(IpAddr, Attachment)>, Error> {
        let entries = fs::read_dir(&self.dir).map_err(|source| Error::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !entry.metadata().is_ok_and(|m| size_ok(m.len())) {
                continue;
            }
            if let Ok(content) = fs::read_to_string(entry.path()) {
                out.push((ip, Attachment::parse(&content)));
            }
        }
        Ok(out)
    }
}

impl Store for DiskStore {
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o750)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
            action: "lock",
            path: path.clone(),
            source: e.into(),
        })?;
        f()
    }

    fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set: usize) -> Result<bool, Error> {
        let path = self.dir.join(ip.to_string());
        let mut file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => {
                return Err(Error::Io {
                    action: "reserve",
                    path,
                    source,
                })
            }
        };
        if let Err(source) = file.write_all(format!("{}\r\n{ifname}", id.trim()).as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(Error::Io {
                action: "write",
                path,
                source,
            });
        }
        let last = self.dir.join(format!("last_reserved_ip.{set}"));
        overwrite(&last, ip.to_string().as_bytes()).map_err(|source| Error::Io {
            action: "write",
            path: last,
            source,
        })?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, Error> {
        self.read_allocations(|_| true)
    }

    /// Reads only files whose size fits `id\r\nifname` or `id`: with many pods, reading every
    /// allocation on every ADD was the slowest step of wiring a pod.
    fn held_by(&self, id: &str, ifname: &str) -> Result<Vec<(IpAddr, Attachment)>, Error> {
        let id = id.trim();
        let sizes = [(id.len() + 2 + ifname.len()) as u64, id.len() as u64];
        let found = self.read_allocations(|size| sizes.contains(&size))?;
        Ok(found
            .into_iter()
            .filter(|(_, a)| a.id == id && a.ifname.as_deref().is_none_or(|i| i == ifname))
            .collect())
    }

    fn release(&self, ip: IpAddr) -> Result<(), Error> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                action: "release",
                path,
                source,
            }),
        }
    }
}

/// Replaces a small file's content in place, then cuts it to length. Not `fs::write`: on ext4,
/// truncating to zero and rewriting makes close(2) start writeback (auto_da_alloc), which took
/// more time than the rest of an allocation. The file is only read under the lock, and a torn
/// write after a crash reads as "no last address", which restarts round robin, as host-local does.
fn overwrite(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    file.write_all_at(content, 0)?;
    file.set_len(content.len() as u64)
}

fn in_set(set: &[IpRange], ip: IpAddr) -> bool {
    set.iter().any(|r| r.subnet.contains(&ip))
}

/// host-local's `GetIter`: round robin from after the last reserved address, across the set's
/// ranges, wrapping once, skipping each range's gateway. Lazy: an IPv6 range is never listed.
fn candidates(set: &[IpRange], last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &IpRange)> {
    let next = move |i: usize, ip: IpAddr| {
        if ip >= set[i].end {
            let j = (i + 1) % set.len();
            (j, set[j].start)
        } else {
            (i, add(ip, 1))
        }
    };
    let first = match last.and_then(|l| {
        set.iter()
            .position(|r| r.start <= l && l <= r.end)
            .map(|i| (i, l))
    }) {
        Some((i, l)) => next(i, l),
        None => (0, set[0].start),
    };
    let mut cursor = Some(first);
    std::iter::from_fn(move || loop {
        let (i, ip) = cursor?;
        let following = next(i, ip);
        cursor = (following != first).then_some(following);
        if ip != set[i].gateway {
            return Some((ip, &set[i]));
        }
    })
}

/// Allocates one address from every range set for (id, ifname).
pub fn allocate(
    store: &impl Store,
    ipam: &HostLocal,
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, Error> {
    store.locked(|| {
        let existing = store.held_by(id, ifname)?;
        let mut done: Vec<Allocation> = Vec::new();
        for (idx, set) in ipam.ranges.iter().enumerate() {
            let holder = existing.iter().find(|(ip, _)| in_set(set, *ip));
            let result = match holder {
                Some((ip, a)) => Err(Error::Duplicate {
                    ip: *ip,
                    id: a.id.clone(),
                }),
                None => allocate_in_set(store, set, idx, id, ifname),
            };
            match result {
                Ok(a) => done.push(a),
                Err(e) => {
                    for a in &done {
                        let _ = store.release(a.ip);
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    })
}

fn allocate_in_set(
    store: &impl Store,
    set: &[IpRange],
    idx: usize,
    id: &str,
    ifname: &str,
) -> Result<Allocation, Error> {
    for (ip, range) in candidates(set, store.last_reserved(idx)) {
        if store.reserve(ip, id, ifname, idx)? {
            return Ok(Allocation {
                ip,
                prefix_len: range.subnet.prefix_len(),
                gateway: range.gateway,
            });
        }
    }
    let ranges = set
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",");
    Err(Error::Exhausted { set: idx, ranges })
}

/// host-local's `ReleaseByID`: the files holding `id\r\nifname`, or failing those, the legacy `id`.
pub fn release(store: &impl Store, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
    store.locked(|| {
        let all = store.held_by(id, ifname)?;
        let exact: Vec<IpAddr> = all
            .iter()
            .filter(|(_, a)| a.id == id.trim() && a.ifname.as_deref() == Some(ifname))
            .map(|(ip, _)| *ip)
            .collect();
        let chosen = if exact.is_empty() {
            all.iter()
                .filter(|(_, a)| a.id == id.trim() && a.ifname.is_none())
                .map(|(ip, _)| *ip)
                .collect()
        } else {
            exact
        };
        for ip in &chosen {
            store.release(*ip)?;
        }
        Ok(chosen)
    })
}

/// CNI 1.1 GC semantics: frees every address whose holder is not among `valid` container ids.
pub fn gc(store: &impl Store, valid: &HashSet<String>) -> Result<Vec<IpAddr>, Error> {
    store.locked(|| {
        let mut freed = Vec::new();
        for (ip, a) in store.allocations()? {
            if !valid.contains(&a.id) {
                store.release(ip)?;
                freed.push(ip);
            }
        }
        Ok(freed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// An in-memory store with host-local's semantics.
    #[derive(Default)]
    struct MemStore {
        files: RefCell<BTreeMap<IpAddr, String>>,
        last: RefCell<BTreeMap<usize, IpAddr>>,
    }

    impl Store for MemStore {
        fn locked<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
            f()
        }
        fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set: usize) -> Result<bool, Error> {
            if self.files.borrow().contains_key(&ip) {
                return Ok(false);
            }
            self.files
                .borrow_mut()
                .insert(ip, format!("{id}\r\n{ifname}"));
            self.last.borrow_mut().insert(set, ip);
            Ok(true)
        }
        fn last_reserved(&self, set: usize) -> Option<IpAddr> {
            self.last.borrow().get(&set).copied()
        }
        fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, Error> {
            Ok(self
                .files
                .borrow()
                .iter()
                .map(|(ip, c)| (*ip, Attachment::parse(c)))
                .collect())
        }
        fn release(&self, ip: IpAddr) -> Result<(), Error> {
            self.files.borrow_mut().remove(&ip);
            Ok(())
        }
    }

    fn ipam(json_ipam: &str) -> HostLocal {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"podnet","plugins":[{{"type":"bridge","ipam":{json_ipam}}}]}}"#
        );
        parse(Path::new("t.conflist"), conf.as_bytes())
            .unwrap()
            .plugins[0]
            .native
            .clone()
            .unwrap()
            .ipam
    }

    /// The sequence observed with the reference plugin (cni.md §3.2).
    #[test]
    fn round_robin_wraps_and_exhausts_like_host_local() {
        let store = MemStore::default();
        let cfg = ipam(
            r#"{"type":"host-local","subnet":"10.98.0.0/29","rangeStart":"10.98.0.2","rangeEnd":"10.98.0.4"}"#,
        );
        let get = |id: &str| allocate(&store, &cfg, id, "eth0").map(|a| a[0].ip.to_string());
        assert_eq!(get("a").unwrap(), "10.98.0.2");
        assert_eq!(get("b").unwrap(), "10.98.0.3");
        release(&store, "a", "eth0").unwrap();
        assert_eq!(get("c").unwrap(), "10.98.0.4");
        assert_eq!(get("d").unwrap(), "10.98.0.2");
        let e = get("e").unwrap_err().to_string();
        assert_eq!(e, "failed to allocate for range 0: no IP addresses available in range set: 10.98.0.2-10.98.0.4");
        assert!(matches!(
            allocate(&store, &cfg, "b", "eth0"),
            Err(Error::Duplicate { .. })
        ));
    }

    #[test]
    fn gateway_is_skipped_and_gc_frees_stale_holders() {
        let store = MemStore::default();
        let cfg = ipam(r#"{"type":"host-local","subnet":"10.0.0.0/24"}"#);
        let a = allocate(&store, &cfg, "a", "eth0").unwrap();
        assert_eq!(
            (
                a[0].ip.to_string(),
                a[0].gateway.to_string(),
                a[0].prefix_len
            ),
            ("10.0.0.2".into(), "10.0.0.1".into(), 24)
        );
        allocate(&store, &cfg, "b", "eth0").unwrap();
        let freed = gc(&store, &["b".to_string()].into()).unwrap();
        assert_eq!(freed, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn disk_store_writes_host_local_files() {
        let data = std::env::temp_dir().join(format!("hostlocal-{}", std::process::id()));
        let store = DiskStore::open(&data, "podnet").unwrap();
        let cfg = ipam(r#"{"type":"host-local","subnet":"10.244.0.0/24"}"#);
        let id = "f".repeat(64);
        allocate(&store, &cfg, &id, "eth0").unwrap();
        let dir = data.join("podnet");
        assert_eq!(
            fs::read(dir.join("10.244.0.2")).unwrap(),
            format!("{id}\r\neth0").into_bytes()
        );
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.244.0.2"
        );
        assert!(dir.join("lock").exists());
        // A legacy id-only file is released by id.
        fs::write(dir.join("10.244.0.9"), "legacy").unwrap();
        assert_eq!(
            release(&store, "legacy", "eth0").unwrap(),
            vec!["10.244.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(release(&store, &id, "eth0").unwrap().len(), 1);
        assert!(
            release(&store, &id, "eth0").unwrap().is_empty(),
            "releasing twice is fine"
        );
        // last_reserved_ip is rewritten in place: a shorter address leaves no tail behind.
        fs::write(dir.join("last_reserved_ip.0"), "10.244.0.254").unwrap();
        allocate(&store, &cfg, &id, "eth0").unwrap();
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.244.0.2"
        );
        fs::remove_dir_all(&data).unwrap();
    }
}
