//! Pulling images from OCI registries into the node's store, with oci-client (the registry
//! protocol, token auth, index resolution to this node's platform, blob digest checks), from the
//! endpoints `registry` picks. Layers download three at a time into scratch files and are
//! unpacked once into the store, which checks them against their diff id; the name is written
//! last, so an interrupted pull never looks complete. Two pods asking for one image at once cause
//! one download.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::ImageConfiguration;
use tracing::{info, warn};

use super::credentials::Source;
use super::reference::Reference;
use super::registry::{Endpoint, Settings};
use super::store::{self, Image, ImageStore};

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
/// Layers downloaded at once by one pull, as containerd's default.
const CONCURRENT_DOWNLOADS: usize = 3;

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
    settings: Settings,
    /// One lock per image reference: a second pull of the same image waits for the first. It
    /// holds the pull secrets of the last pull that succeeded under it.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Vec<Source>>>>>,
    /// Held shared by every pull and exclusively by garbage collection, which could otherwise
    /// remove a layer a pull found present and skipped.
    busy: tokio::sync::RwLock<()>,
}

/// What failed, in the words an operator looks for first (not found, unauthorized, registry
/// unreachable, digest mismatch), then the client's own error chain.
fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as Code};
    let chain = crate::error_chain(e);
    let kind = match e {
        E::ImageManifestNotFoundError(_) => "not found",
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    Code::ManifestUnknown | Code::NameUnknown | Code::BlobUnknown
                )
            }) =>
        {
            "not found"
        }
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => "unauthorized",
        E::RequestError(r) if r.is_connect() || r.is_timeout() => "registry unreachable",
        E::DigestError(_) => "digest mismatch",
        _ => return chain,
    };
    format!("{kind}: {chain}")
}

fn registry_error(image: &str, e: oci_client::errors::OciDistributionError) -> Error {
    Error::Registry {
        image: image.to_owned(),
        message: describe(&e),
    }
}

fn is_unauthorized(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    matches!(e, E::UnauthorizedError { .. } | E::AuthenticationFailure(_))
}

impl Puller {
    pub fn new(store: ImageStore, settings: Settings) -> Puller {
        Puller {
            store,
            settings,
            inflight: Mutex::new(HashMap::new()),
            busy: tokio::sync::RwLock::new(()),
        }
    }

    /// Waits for running pulls to end and holds off new ones while the guard lives.
    pub async fn pause(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.busy.write().await
    }

    /// Pulls `name` (as a pod writes it) and returns the stored image; `secrets` are the pod's
    /// image pull secrets, tried before the node's own credentials.
    pub async fn pull(&self, name: &str, secrets: &[Source]) -> Result<Image, Error> {
        let reference = Reference::parse(name)?;
        let _busy = self.busy.read().await;
        let key = reference.to_string();
        let lock = self
            .inflight
            .lock()
            .expect("pull lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let mut one_at_a_time = match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another pod is pulling this image right now: share its result if it pulled
                // with the same pull secrets (else this pull is authorised on its own; layers
                // already stored are not downloaded again).
                let guard = lock.lock().await;
                if *guard == secrets {
                    if let Ok(image) = self.store.resolve(&key) {
                        return Ok(image);
                    }
                }
                guard
            }
        };
        let started = Instant::now();
        let mut result = Err(Error::Registry {
            image: key.clone(),
            message: "no endpoint".into(),
        });
        for endpoint in self.settings.endpoints(&reference.registry) {
            result = self
                .pull_from(&endpoint, &reference, &key, secrets, started)
                .await;
            match &result {
                Err(e) if endpoint.mirror => {
                    warn!(image = %key, mirror = %endpoint.host, error = %crate::error_chain(e), "pull from mirror failed, trying the next");
                }
                _ => break,
            }
        }
        if result.is_ok() {
            *one_at_a_time = secrets.to_vec();
        }
        drop(one_at_a_time);
        self.inflight.lock().expect("pull lock").remove(&key);
        result
    }

    /// Downloads one layer and unpacks it into the store; returns the bytes downloaded.
    async fn fetch_layer(
        &self,
        client: &Client,
        target: &oci_client::Reference,
        layer: &oci_client::manifest::OciDescriptor,
        diff_id: &str,
        key: &str,
    ) -> Result<u64, Error> {
        let download = self.download(client, target, layer, key).await?;
        let (store, layer_digest, diff_id) =
            (self.store.clone(), layer.digest.clone(), diff_id.to_owned());
        // oci-client checked the blob against its digest as it arrived; unpacking checks the
        // content against the diff id before the layer is put in place.
        tokio::task::spawn_blocking(move || {
            let path = download.path();
            let file = std::fs::File::open(path).map_err(|source| store::Error::Io {
                action: "open",
                path: path.to_owned(),
                source,
            })?;
            store.put_layer(&layer_digest, &diff_id, std::io::BufReader::new(file))
        })
        .await
        .expect("unpack task")?;
        Ok(layer.size.max(0) as u64)
    }

    /// Downloads one layer blob into a scratch file, with progress lines for large layers.
    async fn download(
        &self,
        client: &Client,
        target: &oci_client::Reference,
        layer: &oci_client::manifest::OciDescriptor,
        key: &str,
    ) -> Result<super::scratch::Scratch, Error> {
        let download = self.store.scratch_file("download")?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(download.path())
            .await
            .map_err(|source| Error::Download {
                image: key.to_owned(),
                digest: layer.digest.clone(),
                source,
            })?;
        let size = layer.size.max(0) as u64;
        if size >= PROGRESS_FROM {
            info!(image = %key, layer = %layer.digest, "pulling layer ({:.1} MB)", size as f64 / 1e6);
        }
        let file = Progress::new(file, key, &layer.digest, size);
        client
            .pull_blob(target, layer, file)
            .await
            .map_err(|e| registry_error(key, e))?;
        Ok(download)
    }

    async fn pull_from(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        key: &str,
        secrets: &[Source],
        started: Instant,
    ) -> Result<Image, Error> {
        let fail = |message: String| Error::Registry {
            image: key.to_owned(),
            message,
        };
        let mut target: oci_client::Reference = key
            .parse()
            .map_err(|e: oci_client::ParseError| fail(e.to_string()))?;
        if endpoint.mirror {
            target.set_mirror_registry(endpoint.host.clone());
        }
        let client = self.settings.client(endpoint).map_err(fail)?;
        let sources: Vec<Source> = secrets
            .iter()
            .cloned()
            .chain(self.settings.credentials.iter().cloned().map(Source::File))
            .collect();
        let mut auths: Vec<RegistryAuth> = super::credentials::lookup(&sources, &endpoint.host)
            .map_err(fail)?
            .into_iter()
            .map(|(user, password)| RegistryAuth::Basic(user, password))
            .collect();
        if auths.is_empty() {
            auths.push(RegistryAuth::Anonymous);
        }
        info!(image = %key, from = %endpoint.host, credentials = auths.len(), "pulling image");

        // The image manifest (an index resolved to this node's platform) with the first
        // credentials the registry takes, then its exact bytes, which are what its digest names.
        let mut pulled = None;
        for (i, auth) in auths.iter().enumerate() {
            match client.pull_image_manifest(&target, auth).await {
                Ok(found) => {
                    pulled = Some((found, auth));
                    break;
                }
                Err(e) if is_unauthorized(&e) && i + 1 < auths.len() => continue,
                Err(e) => return Err(registry_error(key, e)),
            }
        }
        let ((manifest, digest), auth) = pulled.expect("one credential at least");
        let mut by_digest = target.clone_with_digest(digest.clone());
        if endpoint.mirror {
            by_digest.set_mirror_registry(endpoint.host.clone());
        }
        let (raw, _) = client
            .pull_manifest_raw(
                &by_digest,
                auth,
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

        // Up to three layers download at once (containerd's default), each unpacked as soon as
        // it is in; every layer runs to its end even if another fails, so a retry fetches only
        // what is missing, and nothing of this pull outlives it.
        let missing: Vec<_> = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .filter(|(_, diff_id)| !self.store.has_layer(diff_id))
            .collect();
        let fetches: Vec<_> = missing
            .into_iter()
            .map(|(layer, diff_id)| self.fetch_layer(&client, &target, layer, diff_id, key))
            .collect();
        let results: Vec<Result<u64, Error>> = futures_util::stream::iter(fetches)
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .collect()
            .await;
        let mut bytes = 0u64;
        for result in results {
            bytes += result?;
        }
        self.store.put_blob(&manifest.config.digest, &config)?;
        self.store.put_blob(&digest, &raw)?;
        self.store.tag(reference, &digest)?;
        let size: i64 = manifest.layers.iter().map(|l| l.size.max(0)).sum();
        crate::metrics::KUBELET.observe_pull(started.elapsed(), size as u64);
        info!(
            image = %key,
            digest = %digest,
            from = %endpoint.host,
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
}
