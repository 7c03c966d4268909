//! A registry token service (the Docker token protocol, as Docker Hub runs it) for a test
//! registry: `GET /token?service=...&scope=repository:NAME:ACTIONS` with basic auth answers
//! `{"token": JWT}`, an ES256 JWT signed by the test CA's key with the CA in `x5c`, which the
//! registry checks against its `rootcertbundle`. Wrong or missing credentials get 401. It listens
//! inside a test node's network namespace, on a thread that stops when dropped (or after 10 min).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::json;

pub const SERVICE: &str = "nodelet-test-registry";
pub const ISSUER: &str = "nodelet-test-issuer";

pub struct TokenServer {
    stop: Arc<AtomicBool>,
    issued: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Signer {
    key: openssl::ec::EcKey<openssl::pkey::Private>,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl Signer {
    /// A JWT granting `scope` (`repository:NAME:pull,push`) to the user, valid for 5 minutes.
    fn token(&self, scope: Option<&str>) -> Result<String> {
        let header = json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let access: Vec<_> = scope
            .and_then(|s| {
                let mut parts = s.splitn(3, ':');
                Some((parts.next()?, parts.next()?, parts.next()?))
            })
            .map(|(kind, name, actions)| {
                json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()})
            })
            .into_iter()
            .collect();
        let claims = json!({
            "iss": ISSUER, "sub": self.user, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let digest = openssl::sha::sha256(signing_input.as_bytes());
        let sig = openssl::ecdsa::EcdsaSig::sign(&digest, &self.key)?;
        // JWS ES256 is r || s, each 32 bytes big-endian (not DER).
        let mut raw = sig.r().to_vec_padded(32)?;
        raw.extend(sig.s().to_vec_padded(32)?);
        Ok(format!("{signing_input}.{}", b64url(&raw)))
    }

    fn authorised(&self, header: Option<&str>) -> bool {
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        header
            .and_then(|h| h.strip_prefix("Basic "))
            .is_some_and(|given| given.trim() == expected)
    }
}

impl TokenServer {
    /// Serves tokens for `user`/`password` on 127.0.0.1:`port` in the network namespace of
    /// process `ns_pid`, signed with `key` (PEM, EC P-256) whose certificate is `cert` (PEM).
    pub fn start(
        ns_pid: i32,
        port: u16,
        key: &Path,
        cert: &Path,
        user: &str,
        password: &str,
    ) -> Result<TokenServer> {
        let key = openssl::ec::EcKey::private_key_from_pem(&std::fs::read(key)?)
            .context("token signing key")?;
        let cert_der = openssl::x509::X509::from_pem(&std::fs::read(cert)?)?.to_der()?;
        let signer = Signer {
            key,
            cert_der,
            user: user.to_owned(),
            password: password.to_owned(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        let thread = std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                let ns = std::fs::File::open(format!("/proc/{ns_pid}/ns/net"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let listener = TcpListener::bind(("127.0.0.1", port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Ok(true) = serve(&signer, stream) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5))??;
        Ok(TokenServer {
            stop,
            issued,
            thread: Some(thread),
        })
    }

    /// How many tokens it has issued.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }
}

/// Answers one request; true if it issued a token.
fn serve(signer: &Signer, stream: std::net::TcpStream) -> Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let scope = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    let granted = signer.authorised(authorization.as_deref());
    let (status, body) = if granted {
        let token = signer.token(scope.as_deref())?;
        (
            "200 OK",
            json!({"token": token, "access_token": token, "expires_in": 300}),
        )
    } else {
        (
            "401 Unauthorized",
            json!({"details": "incorrect username or password"}),
        )
    };
    let body = body.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(granted)
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
