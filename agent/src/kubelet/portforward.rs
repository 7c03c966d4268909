//! Port forwarding over SPDY/3.1 (`portforward.k8s.io`, raw or tunnelled in WebSocket): each
//! forwarded connection is a pair of streams with the same `requestid`, an error stream and a
//! data stream naming the `port`; the data stream is joined to a TCP connection made to
//! localhost:port inside the pod's network namespace.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::spdy;

pub const SPDY_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
pub const WEBSOCKET_PROTOCOLS: [&str; 1] = ["SPDY/3.1+portforward.k8s.io"];

/// The pod a port-forward reaches: its name (for messages) and its network namespace.
#[derive(Clone, Debug)]
pub struct Target {
    pub pod: String,
    pub uid: String,
    pub netns: PathBuf,
}

/// Opens a TCP connection to localhost:port inside the pod's network namespace.
pub async fn connect(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || {
        nodelet_netns::ns::run_in(&netns, move || {
            std::net::TcpStream::connect(("127.0.0.1", port))
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// Serves one port-forward connection until the client closes it.
pub async fn serve<T>(io: T, target: Target)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (tx, mut streams) = mpsc::channel(64);
    let conn = tokio::spawn(spdy::serve(io, tx));
    let mut errors: HashMap<String, spdy::Sender> = HashMap::new();
    while let Some(stream) = streams.recv().await {
        let request = stream.headers.get("requestid").cloned().unwrap_or_default();
        match stream.headers.get("streamtype").map(String::as_str) {
            Some("error") => {
                errors.insert(request, stream.out);
            }
            Some("data") => {
                let error = errors.remove(&request);
                tokio::spawn(forward(stream, error, target.clone()));
            }
            other => debug!(?other, "port-forward: unknown stream type"),
        }
    }
    let _ = conn.await;
}

async fn forward(mut stream: spdy::Stream, error: Option<spdy::Sender>, target: Target) {
    let port = stream
        .headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port else {
        if let Some(e) = &error {
            e.finish(b"invalid or missing port").await;
        }
        stream.out.finish(&[]).await;
        return;
    };
    let tcp = match connect(target.netns.clone(), port).await {
        Ok(t) => t,
        Err(e) => {
            let message = format!(
                "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside the pod's network namespace: {e}",
                target.pod, target.uid
            );
            if let Some(err) = &error {
                err.finish(message.as_bytes()).await;
            }
            stream.out.finish(&[]).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        while let Some(b) = stream.incoming.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let out = stream.out.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.send(&buf[..n]).await {
                        break;
                    }
                }
            }
        }
        out.finish(&[]).await;
    };
    tokio::join!(up, down);
    if let Some(e) = error {
        e.finish(&[]).await;
    }
}
