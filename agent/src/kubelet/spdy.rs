//! SPDY/3.1 as kubectl, kube-apiserver and kubelet speak it for exec, attach and port-forward
//! (moby/spdystream): frames over an upgraded connection, client-opened streams the server must
//! answer with SYN_REPLY, DATA with FIN for half-close, PING echoed, and header blocks in one zlib
//! stream per direction primed with the SPDY/3 dictionary. spdystream does not enforce flow
//! control windows, so neither does this side.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// Frames larger than this are refused (a stream's data arrives in frames of at most 32 KiB).
const MAX_FRAME: usize = 1 << 20;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): the length-prefixed
/// words, then a run of raw text. 1423 bytes.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
            "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
            "cache-control", "connection", "content-base", "content-encoding", "content-language",
            "content-length", "content-location", "content-md5", "content-range", "content-type",
            "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
            "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
            "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
            "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
            "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
            "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
            203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
            403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
            Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
            chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
            text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut dict = Vec::with_capacity(1423);
        for w in WORDS {
            dict.extend_from_slice(&(w.len() as u32).to_be_bytes());
            dict.extend_from_slice(w.as_bytes());
        }
        dict.extend_from_slice(TAIL.as_bytes());
        dict
    })
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        headers: HashMap<String, String>,
        fin: bool,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        id: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing for a server to do.
    Other,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("spdy: {what}"))
}

/// Reads frames; owns the inbound header decompressor.
pub struct FrameReader<R> {
    r: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame, or `None` at a clean end of the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid("frame too large"));
        }
        let mut payload = vec![0u8; len];
        self.r.read_exact(&mut payload).await?;
        if head[0] & 0x80 == 0 {
            let id = u32_at(&head, 0) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                id,
                fin: flags & FLAG_FIN != 0,
                data: Bytes::from(payload),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(&format!("version {version}")));
        }
        Ok(Some(match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM if payload.len() >= 10 => Frame::SynStream {
                id: u32_at(&payload, 0) & 0x7fff_ffff,
                headers: self.headers(&payload[10..])?,
                fin: flags & FLAG_FIN != 0,
            },
            RST_STREAM => Frame::RstStream {
                id: u32_at(&payload, 0) & 0x7fff_ffff,
            },
            PING => Frame::Ping(u32_at(&payload, 0)),
            GOAWAY => Frame::GoAway,
            SYN_STREAM => return Err(invalid("short SYN_STREAM")),
            _ => Frame::Other,
        }))
    }

    /// Inflates one header block (the stream continues across blocks) and parses its pairs.
    fn headers(&mut self, block: &[u8]) -> std::io::Result<HashMap<String, String>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            match result {
                Ok(status) => {
                    input = &input[(self.inflate.total_in() - before_in) as usize..];
                    let progressed = self.inflate.total_out() > before_out
                        || self.inflate.total_in() > before_in;
                    if input.is_empty() || status == Status::StreamEnd || !progressed {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    input = &input[(self.inflate.total_in() - before_in) as usize..];
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|_| invalid("header dictionary"))?;
                }
                Err(_) => return Err(invalid("header block does not inflate")),
            }
        }
        parse_pairs(&out).ok_or_else(|| invalid("malformed header block"))
    }
}

fn parse_pairs(b: &[u8]) -> Option<HashMap<String, String>> {
    let count = u32_at(b, 0) as usize;
    let mut at = 4;
    let mut headers = HashMap::new();
    let field = |at: &mut usize| -> Option<String> {
        let len = u32_at(b, *at) as usize;
        let s = b.get(*at + 4..*at + 4 + len)?;
        *at += 4 + len;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    for _ in 0..count.min(64) {
        let name = field(&mut at)?;
        let value = field(&mut at)?;
        headers.insert(name.to_ascii_lowercase(), value);
    }
    Some(headers)
}

/// Builds outbound frames; owns the outbound header compressor.
pub struct FrameWriter {
    deflate: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("set SPDY dictionary");
        FrameWriter { deflate }
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

impl FrameWriter {
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let before = self.deflate.total_in();
        while ((self.deflate.total_in() - before) as usize) < raw.len() || out.is_empty() {
            out.reserve(256);
            let done = (self.deflate.total_in() - before) as usize;
            self.deflate
                .compress_vec(&raw[done..], &mut out, FlushCompress::Sync)
                .expect("deflate header block");
        }
        out
    }

    pub fn syn_reply(&mut self, id: u32) -> Vec<u8> {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend(self.header_block(&[]));
        control(SYN_REPLY, 0, &payload)
    }

    /// A client's SYN_STREAM (the tests play the client).
    #[cfg(test)]
    pub fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(self.header_block(headers));
        control(SYN_STREAM, 0, &payload)
    }
}

pub fn data(id: u32, fin: bool, bytes: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + bytes.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(bytes);
    f
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// A stream the client opened: its headers, its inbound data (ends at the client's FIN), and
/// a way to write to it.
pub struct Stream {
    pub headers: HashMap<String, String>,
    pub incoming: mpsc::Receiver<Bytes>,
    pub out: Sender,
}

/// Writes frames to the connection (cloneable; one writer task owns the socket).
#[derive(Clone)]
pub struct Sender {
    id: u32,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Sender {
    /// Sends data in frames of at most 32 KiB; false once the connection is gone.
    pub async fn send(&self, bytes: &[u8]) -> bool {
        for chunk in bytes.chunks(32 * 1024) {
            if self.tx.send(data(self.id, false, chunk)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (DATA with FIN), optionally with a last payload.
    pub async fn finish(&self, bytes: &[u8]) {
        let _ = self.tx.send(data(self.id, true, bytes)).await;
    }
}

/// Serves one SPDY connection: answers every stream the client opens, echoes PINGs, routes
/// DATA to the stream's receiver, and hands new streams to `streams`. Returns when either side
/// closes the connection.
pub async fn serve<T>(io: T, streams: mpsc::Sender<Stream>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if w.write_all(&frame).await.is_err() {
                break;
            }
            // Coalesce what is already queued before flushing.
            while let Ok(more) = rx.try_recv() {
                if w.write_all(&more).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut reader = FrameReader::new(r);
    let mut frames = FrameWriter::default();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "spdy connection");
                break;
            }
        };
        match frame {
            Frame::SynStream { id, headers, fin } => {
                if tx.send(frames.syn_reply(id)).await.is_err() {
                    break;
                }
                let (in_tx, in_rx) = mpsc::channel(64);
                if !fin {
                    inbound.insert(id, in_tx);
                }
                let stream = Stream {
                    headers,
                    incoming: in_rx,
                    out: Sender { id, tx: tx.clone() },
                };
                if streams.send(stream).await.is_err() {
                    break;
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(s) = inbound.get(&id) {
                    if !data.is_empty() && s.send(data).await.is_err() {
                        inbound.remove(&id);
                    }
                }
                if fin {
                    inbound.remove(&id);
                }
            }
            Frame::RstStream { id } => {
                inbound.remove(&id);
            }
            Frame::Ping(id) => {
                let _ = tx.send(ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    drop(inbound);
    drop(tx);
    drop(streams);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[tokio::test]
    async fn frames_round_trip_with_compressed_headers() {
        let mut client = FrameWriter::default();
        let mut wire = client.syn_stream(1, &[("streamtype", "error"), ("port", "8080")]);
        wire.extend(client.syn_stream(3, &[("streamtype", "data"), ("port", "8080")]));
        wire.extend(data(3, true, b"GET /"));
        wire.extend(ping(7));
        let mut reader = FrameReader::new(&wire[..]);
        let Some(Frame::SynStream { id: 1, headers, .. }) = reader.next().await.unwrap() else {
            panic!()
        };
        assert_eq!(headers["streamtype"], "error");
        let Some(Frame::SynStream { id: 3, headers, .. }) = reader.next().await.unwrap() else {
            panic!()
        };
        assert_eq!(
            (headers["streamtype"].as_str(), headers["port"].as_str()),
            ("data", "8080")
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"GET /")
            })
        );
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Ping(7)));
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let mut reader = FrameReader::new(
            &b"\x80\x03\x00\x01\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"[..],
        );
        assert!(reader.next().await.is_err());
        let mut reader = FrameReader::new(&b"\x80\x02\x00\x01\x00\x00\x00\x00"[..]);
        assert!(reader.next().await.is_err());
    }
}
