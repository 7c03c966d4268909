//! Upgrading a request to a streaming connection, as kubelet and kube-apiserver do: SPDY/3.1
//! (`X-Stream-Protocol-Version` offers) or WebSocket (`Sec-WebSocket-Protocol` offers), the
//! first offered protocol this side speaks wins; and a byte-stream view of a WebSocket for SPDY
//! tunnelled in WebSocket messages (kubectl ≥ 1.31 port-forward).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::header::HeaderMap;
use hyper::upgrade::Upgraded;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use super::Body;

#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Spdy,
    WebSocket { key: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    pub transport: Transport,
    pub protocol: String,
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Chooses the transport and protocol; `Err` is the reason no upgrade can happen.
/// A data message's bytes. kube-apiserver and kubelet read a text frame's bytes as they read a
/// binary frame's: the Python client's `write_stdin("...")` sends text frames.
pub fn payload(msg: &Message) -> Option<Bytes> {
    match msg {
        Message::Binary(data) => Some(data.clone()),
        Message::Text(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
        _ => None,
    }
}

pub fn negotiate(
    headers: &HeaderMap,
    spdy: &[&str],
    websocket: &[&str],
) -> Result<Upgrade, String> {
    let upgrade = values(headers, "upgrade").join(",").to_ascii_lowercase();
    let (transport, offered, supported) = if upgrade.contains("websocket") {
        let key = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .ok_or("missing Sec-WebSocket-Key")?
            .to_owned();
        (
            Transport::WebSocket { key },
            values(headers, "sec-websocket-protocol"),
            websocket,
        )
    } else if upgrade.contains("spdy/3.1") {
        (
            Transport::Spdy,
            values(headers, "x-stream-protocol-version"),
            spdy,
        )
    } else {
        return Err("Upgrade request required".into());
    };
    let protocol = offered
        .iter()
        .find(|p| supported.contains(p))
        .ok_or_else(|| format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"))?;
    Ok(Upgrade {
        transport,
        protocol: (*protocol).to_owned(),
    })
}

/// The 101 answer for a negotiated upgrade.
pub fn switching_protocols(up: &Upgrade) -> Response<Body> {
    let r = Response::builder()
        .status(101)
        .header("Connection", "Upgrade");
    let r = match &up.transport {
        Transport::Spdy => r
            .header("Upgrade", "SPDY/3.1")
            .header("X-Stream-Protocol-Version", up.protocol.as_str()),
        Transport::WebSocket { key } => r
            .header("Upgrade", "websocket")
            .header(
                "Sec-WebSocket-Accept",
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            )
            .header("Sec-WebSocket-Protocol", up.protocol.as_str()),
    };
    r.body(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
    .expect("valid response")
}

pub type Io = TokioIo<Upgraded>;

pub async fn websocket(io: Upgraded) -> WebSocketStream<Io> {
    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await
}

/// The binary messages of a WebSocket as one byte stream both ways (each write one message).
pub fn websocket_bytes(ws: WebSocketStream<Io>) -> DuplexStream {
    let (ours, mut theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut source) = ws.split();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                msg = source.next() => match msg {
                    Some(Ok(Message::Ping(p))) => { let _ = sink.send(Message::Pong(p)).await; }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(m)) => if let Some(data) = payload(&m) {
                        if theirs.write_all(&data).await.is_err() { break }
                    },
                },
                n = theirs.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() { break }
                    }
                },
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn picks_the_clients_first_supported_protocol() {
        let spdy = headers(&[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
        ]);
        let up = negotiate(&spdy, &["v4.channel.k8s.io"], &[]).unwrap();
        assert_eq!(
            (up.transport, up.protocol.as_str()),
            (Transport::Spdy, "v4.channel.k8s.io")
        );
        let ws = headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
        ]);
        let up = negotiate(&ws, &[], &["v5.channel.k8s.io", "v4.channel.k8s.io"]).unwrap();
        assert_eq!(up.protocol, "v5.channel.k8s.io");
        let r = switching_protocols(&up);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(negotiate(&ws, &[], &["v4.channel.k8s.io"]).is_err());
        assert!(negotiate(&headers(&[]), &[], &[]).is_err());
    }
}
