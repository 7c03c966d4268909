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

/// Accepts connections forever; `handle` gets each request and whether the client presented a
/// certificate (which the handshake has verified).
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
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(server = name, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handle) = (acceptor.clone(), handle.clone());
        tokio::spawn(async move {
            let Ok(ssl) = Ssl::new(acceptor.context()) else {
                return;
            };
            let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
                return;
            };
            if let Err(e) = std::pin::Pin::new(&mut tls).accept().await {
                debug!(server = name, %peer, error = %e, "TLS handshake refused");
                return;
            }
            let has_cert = tls.ssl().peer_certificate().is_some();
            let service = hyper::service::service_fn(move |req| {
                let response = handle(req, has_cert);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}
