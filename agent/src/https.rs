//! HTTPS as both of nodelet's servers speak it (the built-in API and the kubelet API): OpenSSL
//! with client certificates checked against given CAs, HTTP/1.1 with upgrades (for SPDY and
//! WebSocket), one task per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::net::TcpListener;
use tracing::{debug, warn};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(code: u16, content_type: &str, bytes: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-cache, private")
        .body(
            Full::new(bytes.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("valid response")
}

/// TLS with this certificate; client certificates are checked against `client_ca` and, when
/// `require_client_cert`, a connection without one is refused in the handshake.
pub fn acceptor(
    cert: &X509,
    key: &PKey<Private>,
    client_ca: &[X509],
    require_client_cert: bool,
) -> anyhow::Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_private_key(key)?;
    b.set_certificate(cert)?;
    let mut names = openssl::stack::Stack::new()?;
    for ca in client_ca {
        b.cert_store_mut().add_cert(ca.clone())?;
        names.push(ca.subject_name().to_owned()?)?;
    }
    b.set_client_ca_list(names);
    b.set_verify(if require_client_cert {
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
    } else {
        SslVerifyMode::PEER
    });
    // Clients resume sessions (Go's and kube-rs' do); with client certificates OpenSSL refuses
    // a resumption unless the session has a context to belong to.
    b.set_session_id_context(b"nodelet")?;
    Ok(b.build())
}

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers, counted from when the server waits for
/// them: also how long an idle keep-alive connection is kept (kube-apiserver's ReadHeaderTimeout
/// is 32 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one listener holds at once, and connections from one address: a pod (or anyone
/// on the node) that opens thousands gets the rest closed at once, and the others are served.
const MAX_CONNECTIONS: usize = 8192;
const MAX_PER_PEER: usize = 1024;

/// Connection slots of one listener, overall and per peer address.
#[derive(Default)]
struct Slots {
    per_peer: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// A connection's slot, given back when the connection ends.
struct Slot {
    slots: Arc<Slots>,
    peer: std::net::IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let mut per_peer = self.per_peer.lock().expect("slots lock");
        let mine = per_peer.entry(peer).or_default();
        if *mine >= MAX_PER_PEER || self.total.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            return None;
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self.slots.per_peer.lock().expect("slots lock");
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.slots
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// TCP keepalive, so that connections of peers that vanished (a deleted pod, a dead node) are
/// noticed and closed (tcp(7): probes after 30 s idle, every 10 s, 3 unanswered).
fn keepalive(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
}

/// Accepts connections forever; `handle` gets each request and whether the client presented a
/// certificate (which the handshake has verified). Out of descriptors, it pauses accepting
/// briefly and goes on; connections over the limits are closed at once.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    acceptor: SslAcceptor,
    handle: H,
) where
    H: Fn(Request<Incoming>, bool) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = Arc::new(acceptor);
    let slots = Arc::new(Slots::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(server = name, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            debug!(server = name, %peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp);
        let (acceptor, handle) = (acceptor.clone(), handle.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(ssl) = Ssl::new(acceptor.context()) else {
                return;
            };
            let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
                return;
            };
            let handshake = std::pin::Pin::new(&mut tls).accept();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(server = name, %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    debug!(server = name, %peer, "TLS handshake timed out");
                    return;
                }
            }
            let has_cert = tls.ssl().peer_certificate().is_some();
            let service = hyper::service::service_fn(move |req| {
                let response = handle(req, has_cert);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}
