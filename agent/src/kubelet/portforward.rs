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
pub const WEBSOCKET_PROTOCOLS: [&str; 3] = [
    "SPDY/3.1+portforward.k8s.io",
    "v4.channel.k8s.io",
    "portforward.k8s.io",
];

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

/// kubelet's own WebSocket port-forward (`v4.channel.k8s.io`, what kube-rs speaks): the ports
/// come in the query; port i has data channel 2i and error channel 2i+1, each opened by a
/// message holding the port as two little-endian bytes; one connection per port.
pub async fn serve_websocket(
    ws: tokio_tungstenite::WebSocketStream<super::streams::Io>,
    target: Target,
    ports: Vec<u16>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Message;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let mut inputs: Vec<mpsc::Sender<bytes::Bytes>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let mut preamble = vec![ch];
            preamble.extend_from_slice(&port.to_le_bytes());
            let _ = out_tx.send(preamble).await;
        }
        let (in_tx, mut in_rx) = mpsc::channel::<bytes::Bytes>(64);
        inputs.push(in_tx);
        let (out, netns, port, target) =
            (out_tx.clone(), target.netns.clone(), *port, target.clone());
        tokio::spawn(async move {
            let tcp = match connect(netns, port).await {
                Ok(t) => t,
                Err(e) => {
                    let mut msg = vec![err_ch];
                    msg.extend_from_slice(
                        format!(
                            "error forwarding port {port} to pod {}, uid {}: {e}",
                            target.pod, target.uid
                        )
                        .as_bytes(),
                    );
                    let _ = out.send(msg).await;
                    return;
                }
            };
            let (mut r, mut w) = tcp.into_split();
            let up = tokio::spawn(async move {
                while let Some(b) = in_rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut msg = Vec::with_capacity(n + 1);
                        msg.push(data_ch);
                        msg.extend_from_slice(&buf[..n]);
                        if out.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The pod closed the connection: this port is done (the WebSocket closes when
            // every port is, as kubelet's does).
            up.abort();
        });
    }
    drop(out_tx);
    loop {
        tokio::select! {
            msg = out_rx.recv() => match msg {
                Some(m) => if sink.send(Message::Binary(m.into())).await.is_err() { break },
                None => break,
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(m)) => if let Some(d) = super::streams::payload(&m) {
                    // Only data channels carry input; their index is the port's.
                    if let Some((&ch, rest)) = d.split_first() {
                        if ch % 2 == 0 {
                            if let Some(tx) = inputs.get(usize::from(ch / 2)) {
                                let _ = tx.send(bytes::Bytes::copy_from_slice(rest)).await;
                            }
                        }
                    }
                },
            },
        }
    }
    let _ = sink.close().await;
}
