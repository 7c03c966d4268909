//! The node's image store: content-addressed blobs, layers unpacked once and shared, and names.
//!
//! ```text
//! images/blobs/sha256/<hex>          manifests and configs, verified against their digest
//! images/layers/sha256/<diff id>/    one unpacked layer (overlay whiteouts), renamed into place whole
//! images/refs.json                   normalised reference -> manifest digest
//! images/lock                        flock(2) for writers (the agent and `nodelet image import`)
//! images/tmp/                        work in progress; anything here after a crash is garbage
//! ```
//!
//! An image's last use is its manifest blob's mtime: set when it is stored, pulled again or a
//! container starts from it. Garbage collection removes names first, then what no name needs.
//!
//! Nothing becomes visible before it is complete and verified: blobs and layers are written under
//! `tmp/` and renamed, `refs.json` is replaced atomically, so an interrupted import never leaves an
//! image that looks whole. Registry pulls add blobs and layers through the same calls.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use super::reference::{self, Reference};
use super::scratch::{self, Scratch};
use super::unpack;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {what} {path}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Reference(#[from] reference::Error),
    #[error("blob {digest}: content has digest {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("unsupported digest {0:?} (only sha256)")]
    UnsupportedDigest(String),
    #[error("{path} is not an OCI image layout: {reason}")]
    NotLayout { path: PathBuf, reason: String },
    #[error("no image reference given and {path} names none (annotation io.containerd.image.name or a full org.opencontainers.image.ref.name)")]
    NoReference { path: PathBuf },
    #[error("image {0} not found in the node's image store")]
    NotFound(String),
    #[error("image {reference} is incomplete: {detail}")]
    Incomplete { reference: String, detail: String },
    #[error("unpack layer {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: unpack::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// An image ready to run: its config and its unpacked layers, base first.
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub config: ImageConfiguration,
    pub layers: Vec<PathBuf>,
}

/// One stored image: a manifest, and every name that points at it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSummary {
    pub digest: String,
    /// Its references, sorted.
    pub names: Vec<String>,
    /// The sum of its layers' (compressed) sizes.
    pub size: u64,
    /// When a container last started from it, or it was stored or pulled again.
    pub last_used: Option<std::time::SystemTime>,
}

#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn hex_of(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => Err(Error::UnsupportedDigest(digest.to_owned())),
    }
}

/// sha256 of a whole reader, as `sha256:<hex>`.
pub fn sha256_of(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = ImageStore { root: root.into() };
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = store.root.join(dir);
            fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        }
        Ok(store)
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(hex_of(diff_id)?))
    }

    fn tmp_dir(&self) -> Result<Scratch> {
        let path = self.root.join("tmp").join(crate::random_hex(8));
        fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        Scratch::lock(path.clone()).map_err(io_err("lock", &path))
    }

    /// A fresh file under `tmp/` for work in progress (a download), removed when dropped.
    pub fn scratch_file(&self, suffix: &str) -> Result<Scratch> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{}.{suffix}", crate::random_hex(8)));
        fs::File::create(&path).map_err(io_err("create", &path))?;
        Scratch::lock(path.clone()).map_err(io_err("lock", &path))
    }

    fn lock(&self) -> Result<Flock<fs::File>> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
            action: "lock",
            path,
            source: e.into(),
        })
    }

    /// Stores `data` as a blob after checking it has `digest`.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<PathBuf> {
        let actual = sha256_of(data).map_err(io_err("hash", &self.root))?;
        if actual != digest {
            return Err(Error::DigestMismatch {
                digest: digest.to_owned(),
                actual,
            });
        }
        let path = self.blob_path(digest)?;
        if !path.exists() {
            let tmp = self.scratch_file("blob")?;
            fs::write(tmp.path(), data).map_err(io_err("write", tmp.path()))?;
            fs::rename(tmp.path(), &path).map_err(io_err("store", &path))?;
        }
        Ok(path)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(io_err("read", &path))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id)
            .map(|p| p.is_dir())
            .unwrap_or(false)
    }

    /// Unpacks a (possibly compressed) layer blob and moves it into place under its diff id,
    /// which is checked against the uncompressed content.
    pub fn put_layer(&self, layer_digest: &str, diff_id: &str, blob: impl Read) -> Result<PathBuf> {
        let target = self.layer_path(diff_id)?;
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.tmp_dir()?;
        let actual = unpack::unpack(blob, tmp.path()).map_err(|source| Error::Unpack {
            digest: layer_digest.to_owned(),
            source,
        })?;
        if actual != diff_id {
            return Err(Error::DigestMismatch {
                digest: diff_id.to_owned(),
                actual,
            });
        }
        match fs::rename(tmp.path(), &target) {
            Ok(()) => Ok(target),
            Err(_) if target.is_dir() => Ok(target), // another writer finished it first
            Err(e) => Err(io_err("store layer", &target)(e)),
        }
    }

    fn refs(&self) -> Result<BTreeMap<String, String>> {
        let path = self.root.join("refs.json");
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Parse {
                what: "image names",
                path,
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Names a stored manifest; the write is atomic and serialised with other writers.
    pub fn tag(&self, reference: &Reference, manifest_digest: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut refs = self.refs()?;
        refs.insert(reference.to_string(), manifest_digest.to_owned());
        self.write_refs(&refs)?;
        self.touch(manifest_digest);
        Ok(())
    }

    /// Replaces `refs.json` atomically (write aside, rename); callers hold the lock.
    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<()> {
        let path = self.root.join("refs.json");
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(refs).expect("string map serialises");
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("replace", &path))
    }

    /// Records a use of the image whose manifest is `digest` (best effort: a use that cannot be
    /// recorded only makes the image look older to garbage collection).
    pub fn touch(&self, digest: &str) {
        if let Ok(path) = self.blob_path(digest) {
            let now = nix::sys::time::TimeSpec::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &now,
                &now,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            );
        }
    }

    /// The digests the given names (as pods write them) point at, from one read of the names;
    /// names the store does not have are skipped.
    pub fn digests_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let refs = self.refs().unwrap_or_default();
        names
            .into_iter()
            .filter_map(|name| refs.get(&Reference::parse(name).ok()?.to_string()).cloned())
            .collect()
    }

    /// The filesystem holding the store: (capacity, available) in bytes, as `df` counts them.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| Error::Io {
            action: "statvfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        let block = st.fragment_size() as u64;
        Ok((
            st.blocks() as u64 * block,
            st.blocks_available() as u64 * block,
        ))
    }

    /// Removes every name of the image whose manifest is `digest`, then the blobs and layers no
    /// remaining image uses. Names go first, so a crash halfway leaves unnamed garbage, never a
    /// named image with parts missing; layers are renamed into `tmp/` before being deleted.
    pub fn remove(&self, digest: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut refs = self.refs()?;
        refs.retain(|_, d| d != digest);
        self.write_refs(&refs)?;

        let parts = |digest: &str| -> Option<(String, Vec<String>)> {
            let manifest: ImageManifest =
                serde_json::from_slice(&self.read_blob(digest).ok()?).ok()?;
            let config_digest = manifest.config().digest().to_string();
            let config: ImageConfiguration =
                serde_json::from_slice(&self.read_blob(&config_digest).ok()?).ok()?;
            Some((config_digest, config.rootfs().diff_ids().clone()))
        };
        let mut kept_blobs = std::collections::HashSet::new();
        let mut kept_layers = std::collections::HashSet::new();
        for other in refs.values() {
            kept_blobs.insert(other.clone());
            if let Some((config, layers)) = parts(other) {
                kept_blobs.insert(config);
                kept_layers.extend(layers);
            }
        }
        let Some((config, layers)) = parts(digest) else {
            return Ok(());
        };
        for layer in layers.iter().filter(|l| !kept_layers.contains(*l)) {
            let path = self.layer_path(layer)?;
            let doomed = self
                .root
                .join("tmp")
                .join(format!("{}.removed", crate::random_hex(8)));
            match fs::rename(&path, &doomed) {
                Ok(()) => fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        for blob in [digest, config.as_str()] {
            if !kept_blobs.contains(blob) {
                let path = self.blob_path(blob)?;
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
        }
        Ok(())
    }

    /// Removes what interrupted pulls, imports and collections left in `tmp/` (see
    /// [`scratch::sweep`]); returns how many entries went.
    pub fn sweep_tmp(&self) -> usize {
        scratch::sweep(&self.root.join("tmp"))
    }

    /// Finds an image by the name a pod uses (normalised), with every layer present.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        let reference = Reference::parse(name)?.to_string();
        let digest = self
            .refs()?
            .get(&reference)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let incomplete = |detail: String| Error::Incomplete {
            reference: reference.clone(),
            detail,
        };
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(&digest)?)
            .map_err(|e| incomplete(format!("manifest: {e}")))?;
        let config_digest = manifest.config().digest().to_string();
        let config: ImageConfiguration = serde_json::from_slice(&self.read_blob(&config_digest)?)
            .map_err(|e| incomplete(format!("config: {e}")))?;
        let layers = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| match self.layer_path(d) {
                Ok(p) if p.is_dir() => Ok(p),
                _ => Err(incomplete(format!("layer {d} missing"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Image {
            reference,
            digest,
            config,
            layers,
        })
    }

    /// Every stored image, once per manifest, with its names.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (reference, digest) in self.refs()? {
            by_digest.entry(digest).or_default().push(reference);
        }
        Ok(by_digest
            .into_iter()
            .map(|(digest, names)| {
                let size = self
                    .read_blob(&digest)
                    .ok()
                    .and_then(|m| serde_json::from_slice::<ImageManifest>(&m).ok())
                    .map(|m| m.layers().iter().map(|l| l.size()).sum())
                    .unwrap_or(0);
                let last_used = self
                    .blob_path(&digest)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .and_then(|m| m.modified().ok());
                ImageSummary {
                    digest,
                    names,
                    size,
                    last_used,
                }
            })
            .collect())
    }

    /// `nodelet image import`: an OCI image layout directory or an OCI archive (a tar of one).
    /// Returns the references stored.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<Vec<String>> {
        let meta = fs::metadata(source).map_err(io_err("read", source))?;
        if meta.is_dir() {
            return self.import_layout(source, name);
        }
        let tmp = self.tmp_dir()?;
        let archive = fs::File::open(source).map_err(io_err("open", source))?;
        tar::Archive::new(archive)
            .unpack(tmp.path())
            .map_err(io_err("extract archive", source))?;
        self.import_layout(tmp.path(), name)
    }

    fn import_layout(&self, layout: &Path, name: Option<&str>) -> Result<Vec<String>> {
        let not_layout = |reason: String| Error::NotLayout {
            path: layout.to_owned(),
            reason,
        };
        if !layout.join("oci-layout").is_file() {
            return Err(not_layout("no oci-layout file".into()));
        }
        let index_path = layout.join("index.json");
        let index: ImageIndex =
            serde_json::from_slice(&fs::read(&index_path).map_err(io_err("read", &index_path))?)
                .map_err(|source| Error::Parse {
                    what: "image index",
                    path: index_path.clone(),
                    source,
                })?;
        let mut stored = Vec::new();
        for descriptor in index.manifests() {
            let annotations = descriptor.annotations().clone().unwrap_or_default();
            let reference = match name {
                Some(n) => Reference::parse(n)?,
                None => annotations
                    .get("io.containerd.image.name")
                    .or_else(|| {
                        annotations
                            .get("org.opencontainers.image.ref.name")
                            .filter(|r| r.contains([':', '/']))
                    })
                    .map(|r| Reference::parse(r))
                    .transpose()?
                    .ok_or_else(|| Error::NoReference {
                        path: layout.to_owned(),
                    })?,
            };
            let digest = self.import_manifest(
                layout,
                descriptor.digest().as_ref(),
                descriptor.media_type(),
            )?;
            self.tag(&reference, &digest)?;
            stored.push(reference.to_string());
            if name.is_some() {
                break; // one name names one image: the first in the index
            }
        }
        if stored.is_empty() {
            return Err(not_layout("index.json lists no manifests".into()));
        }
        Ok(stored)
    }

    /// Stores one manifest (resolving an index to this node's platform) with its config and
    /// layers; returns the digest of the image manifest stored.
    fn import_manifest(
        &self,
        layout: &Path,
        digest: &str,
        media_type: &MediaType,
    ) -> Result<String> {
        let blob_file =
            |d: &str| -> Result<PathBuf> { Ok(layout.join("blobs/sha256").join(hex_of(d)?)) };
        let path = blob_file(digest)?;
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        if *media_type == MediaType::ImageIndex {
            let index: ImageIndex =
                serde_json::from_slice(&data).map_err(|source| Error::Parse {
                    what: "image index",
                    path: path.clone(),
                    source,
                })?;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
                    })
                })
                .ok_or_else(|| Error::NotLayout {
                    path: layout.to_owned(),
                    reason: format!("no manifest for linux/{}", host_arch()),
                })?;
            return self.import_manifest(layout, chosen.digest().as_ref(), chosen.media_type());
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&data).map_err(|source| Error::Parse {
                what: "image manifest",
                path: path.clone(),
                source,
            })?;
        let config_digest = manifest.config().digest().to_string();
        let config_path = blob_file(&config_digest)?;
        let config_data = fs::read(&config_path).map_err(io_err("read", &config_path))?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_data).map_err(|source| Error::Parse {
                what: "image config",
                path: config_path.clone(),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(Error::NotLayout {
                path: layout.to_owned(),
                reason: format!(
                    "{} layers but {} diff ids in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let layer_digest = layer.digest().to_string();
            if self.has_layer(diff_id) {
                continue;
            }
            let layer_path = blob_file(&layer_digest)?;
            let actual =
                sha256_of(fs::File::open(&layer_path).map_err(io_err("open", &layer_path))?)
                    .map_err(io_err("read", &layer_path))?;
            if actual != layer_digest {
                return Err(Error::DigestMismatch {
                    digest: layer_digest,
                    actual,
                });
            }
            let file = fs::File::open(&layer_path).map_err(io_err("open", &layer_path))?;
            self.put_layer(&layer_digest, diff_id, io::BufReader::new(file))?;
        }
        self.put_blob(&config_digest, &config_data)?;
        self.put_blob(digest, &data)?;
        Ok(digest.to_owned())
    }
}

/// This node's architecture in OCI spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
