//! Pulling images from OCI registries into the node's store, with oci-client (the registry
//! protocol, token auth, index resolution to this node's platform, blob digest checks). Layers
//! are downloaded to a temporary file, then unpacked once into the store, which checks them
//! against their diff id; the name is written last, so an interrupted pull never looks complete.
//! Two pods asking for one image at once cause one download.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::ImageConfiguration;
use tracing::info;

use super::reference::Reference;
use super::store::{self, sha256_of, Image, ImageStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] super::reference::Error),
    #[error("{image}: {message}")]
    Registry { image: String, message: String },
    #[error("{image}: config lists {diff_ids} layers, the manifest {layers}")]
    LayerCount {
        image: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error("{image}: parse image config")]
    Config {
        image: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{image}: download layer {digest}")]
    Download {
        image: String,
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Layers at least this large get progress lines while they download.
const PROGRESS_FROM: u64 = 10_000_000;
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A download's destination that logs bytes and rate every few seconds for large layers.
struct Progress<'a, W> {
    inner: W,
    image: &'a str,
    layer: &'a str,
    size: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl<'a, W> Progress<'a, W> {
    fn new(inner: W, image: &'a str, layer: &'a str, size: u64) -> Self {
        let now = Instant::now();
        Progress {
            inner,
            image,
            layer,
            size,
            done: 0,
            started: now,
            last: now,
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Progress<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.done += n as u64;
            if self.size >= PROGRESS_FROM && self.last.elapsed() >= PROGRESS_EVERY {
                self.last = Instant::now();
                let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3) / 1e6;
                info!(image = %self.image, layer = %self.layer, "pulling layer: {:.1} of {:.1} MB at {rate:.1} MB/s",
                    self.done as f64 / 1e6, self.size as f64 / 1e6);
            }
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub struct Puller {
    store: ImageStore,
    /// docker `config.json` files searched for a registry's credentials, in order.
    credentials: Vec<std::path::PathBuf>,
    /// Registries spoken to over plain HTTP besides those on 127.0.0.0/8 (Docker's default).
    insecure: Vec<String>,
    /// One lock per image reference: a second pull of the same image waits for the first.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn registry_error(image: &str, e: oci_client::errors::OciDistributionError) -> Error {
    Error::Registry {
        image: image.to_owned(),
        message: e.to_string(),
    }
}

impl Puller {
    pub fn new(
        store: ImageStore,
        insecure: Vec<String>,
        credentials: Vec<std::path::PathBuf>,
    ) -> Puller {
        Puller {
            store,
            credentials,
            insecure,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.insecure.iter().any(|r| r == registry || r == host)
    }

    /// Pulls `name` (as a pod writes it) and returns the stored image.
    pub async fn pull(&self, name: &str) -> Result<Image, Error> {
        let reference = Reference::parse(name)?;
        let key = reference.to_string();
        let lock = self
            .inflight
            .lock()
            .expect("pull lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let _one_at_a_time = match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another pod is pulling this image right now: share its result.
                let guard = lock.lock().await;
                if let Ok(image) = self.store.resolve(&key) {
                    return Ok(image);
                }
                guard
            }
        };
        let result = self.pull_locked(&reference, &key).await;
        self.inflight.lock().expect("pull lock").remove(&key);
        result
    }

    async fn pull_locked(&self, reference: &Reference, key: &str) -> Result<Image, Error> {
        let started = Instant::now();
        let target: oci_client::Reference =
            key.parse()
                .map_err(|e: oci_client::ParseError| Error::Registry {
                    image: key.to_owned(),
                    message: e.to_string(),
                })?;
        let protocol = if self.plain_http(&reference.registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..Default::default()
        });
        let auth = match super::credentials::lookup(&self.credentials, &reference.registry) {
            Ok(Some((user, password))) => RegistryAuth::Basic(user, password),
            Ok(None) => RegistryAuth::Anonymous,
            Err(message) => {
                return Err(Error::Registry {
                    image: key.to_owned(),
                    message,
                })
            }
        };
        info!(image = %key, authenticated = !matches!(auth, RegistryAuth::Anonymous), "pulling image");

        // The image manifest (an index resolved to this node's platform), then its exact bytes,
        // which are what its digest names.
        let (manifest, digest) = client
            .pull_image_manifest(&target, &auth)
            .await
            .map_err(|e| registry_error(key, e))?;
        let by_digest = target.clone_with_digest(digest.clone());
        let (raw, _) = client
            .pull_manifest_raw(
                &by_digest,
                &auth,
                &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
            )
            .await
            .map_err(|e| registry_error(key, e))?;
        let mut config = Vec::new();
        client
            .pull_blob(&target, &manifest.config, &mut config)
            .await
            .map_err(|e| registry_error(key, e))?;
        let parsed: ImageConfiguration =
            serde_json::from_slice(&config).map_err(|source| Error::Config {
                image: key.to_owned(),
                source,
            })?;
        let diff_ids = parsed.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::LayerCount {
                image: key.to_owned(),
                diff_ids: diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }

        let mut bytes = 0u64;
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if self.store.has_layer(diff_id) {
                continue;
            }
            let download = self.store.scratch_file()?;
            let io_err = |source| Error::Download {
                image: key.to_owned(),
                digest: layer.digest.clone(),
                source,
            };
            let file = tokio::fs::File::create(&download).await.map_err(io_err)?;
            let size = layer.size.max(0) as u64;
            if size >= PROGRESS_FROM {
                info!(image = %key, layer = %layer.digest, "pulling layer ({:.1} MB)", size as f64 / 1e6);
            }
            let file = Progress::new(file, key, &layer.digest, size);
            let pulled = client.pull_blob(&target, layer, file).await;
            if let Err(e) = pulled {
                let _ = std::fs::remove_file(&download);
                return Err(registry_error(key, e));
            }
            bytes += layer.size.max(0) as u64;
            let (store, layer_digest, diff_id, path) = (
                self.store.clone(),
                layer.digest.clone(),
                diff_id.clone(),
                download.clone(),
            );
            let unpacked = tokio::task::spawn_blocking(move || {
                // oci-client checked the blob's digest while downloading; check it again on disk.
                let file = std::fs::File::open(&path).map_err(|source| store::Error::Io {
                    action: "open",
                    path: path.clone(),
                    source,
                })?;
                let actual = sha256_of(std::io::BufReader::new(&file)).map_err(|source| {
                    store::Error::Io {
                        action: "read",
                        path: path.clone(),
                        source,
                    }
                })?;
                if actual != layer_digest {
                    return Err(store::Error::DigestMismatch {
                        digest: layer_digest,
                        actual,
                    });
                }
                let file = std::fs::File::open(&path).map_err(|source| store::Error::Io {
                    action: "open",
                    path: path.clone(),
                    source,
                })?;
                store.put_layer(&layer_digest, &diff_id, std::io::BufReader::new(file))
            })
            .await
            .expect("unpack task");
            let _ = std::fs::remove_file(&download);
            unpacked?;
        }
        self.store.put_blob(&manifest.config.digest, &config)?;
        self.store.put_blob(&digest, &raw)?;
        self.store.tag(reference, &digest)?;
        info!(
            image = %key,
            digest = %digest,
            "pulled in {:.1} s ({:.1} MB downloaded)",
            started.elapsed().as_secs_f64(),
            bytes as f64 / 1e6
        );
        Ok(self.store.resolve(key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_passes_every_byte_through() {
        use tokio::io::AsyncWriteExt;
        let mut out = Progress::new(Vec::new(), "img", "sha256:x", 20_000_000);
        for _ in 0..100 {
            out.write_all(&[7u8; 1000]).await.unwrap();
        }
        out.flush().await.unwrap();
        assert_eq!(out.done, 100_000);
        assert_eq!(out.inner.len(), 100_000);
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let dir = std::env::temp_dir().join(format!("nodelet-pull-{}", std::process::id()));
        let puller = Puller::new(
            ImageStore::open(&dir).unwrap(),
            vec!["registry.lan:5000".into()],
            Vec::new(),
        );
        assert!(puller.plain_http("127.0.0.1:5000"));
        assert!(puller.plain_http("localhost:5000"));
        assert!(puller.plain_http("registry.lan:5000"));
        assert!(!puller.plain_http("registry.lan:6000"));
        assert!(!puller.plain_http("docker.io"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
