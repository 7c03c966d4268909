//! kubelet's healthz endpoint: plain HTTP on `healthzBindAddress:healthzPort` (127.0.0.1:10248),
//! `/healthz` with its checks `ping` and `syncloop` (the agent's main loop has come round within
//! `SYNC_LOOP_LIMIT`), each also alone at `/healthz/<check>`, answered as kube's healthz
//! handler answers (`ok`, or 500 with `[-]syncloop failed: ...`; `?verbose` lists the checks).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::https::{full, Body};

/// How long the main loop may go without coming round (it wakes every `TICK` at least).
const SYNC_LOOP_LIMIT: Duration = Duration::from_secs(60);
pub const TICK: Duration = Duration::from_secs(10);

/// When the agent's main loop last came round, in Unix seconds.
#[derive(Default)]
pub struct Heartbeat(AtomicI64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0
            .store(jiff::Timestamp::now().as_second(), Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let last = self.0.load(Ordering::Relaxed);
        let now = jiff::Timestamp::now().as_second();
        Duration::from_secs(now.saturating_sub(last).max(0) as u64)
    }
}

fn answer(heartbeat: &Heartbeat, path: &str, verbose: bool) -> Response<Body> {
    let age = heartbeat.age();
    let syncloop = if age <= SYNC_LOOP_LIMIT {
        Ok(())
    } else {
        Err(format!(
            "syncloop failed: the main loop has not come round for {} s",
            age.as_secs()
        ))
    };
    let checks: Vec<(&str, Result<(), String>)> = vec![("ping", Ok(())), ("syncloop", syncloop)];
    let selected: Vec<&(&str, Result<(), String>)> = match path.strip_prefix("/healthz") {
        Some("" | "/") => checks.iter().collect(),
        Some(one) => checks
            .iter()
            .filter(|(name, _)| one.strip_prefix('/') == Some(*name))
            .collect(),
        None => Vec::new(),
    };
    if selected.is_empty() {
        return full(404, "text/plain; charset=utf-8", "404 page not found\n");
    }
    let failed = selected.iter().any(|(_, r)| r.is_err());
    if !failed && !verbose {
        return full(200, "text/plain; charset=utf-8", "ok");
    }
    let mut text = String::new();
    for (name, r) in &selected {
        match r {
            Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
            Err(e) => text.push_str(&format!("[-]{e}\n")),
        }
    }
    if failed {
        text.push_str("healthz check failed\n");
        full(500, "text/plain; charset=utf-8", text)
    } else {
        text.push_str("healthz check passed\n");
        full(200, "text/plain; charset=utf-8", text)
    }
}

pub async fn serve(listener: TcpListener, heartbeat: Arc<Heartbeat>) {
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "healthz serving");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let heartbeat = heartbeat.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let verbose = req.uri().query().is_some_and(|q| {
                    q.split('&')
                        .any(|p| p == "verbose" || p.starts_with("verbose="))
                });
                let r = answer(&heartbeat, req.uri().path(), verbose);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(30), conn).await {
                debug!(error = %e, "healthz connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(r: Response<Body>) -> (u16, String) {
        use http_body_util::BodyExt as _;
        let code = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn checks_as_kube_healthz_answers() {
        let h = Heartbeat::default();
        h.beat();
        assert_eq!(
            text(answer(&h, "/healthz", false)).await,
            (200, "ok".into())
        );
        let (code, verbose) = text(answer(&h, "/healthz", true)).await;
        assert_eq!(code, 200);
        assert!(verbose.contains("[+]syncloop ok") && verbose.ends_with("healthz check passed\n"));
        assert_eq!(text(answer(&h, "/healthz/nosuch", false)).await.0, 404);
        // A main loop that stopped coming round fails the check, and the whole.
        h.0.store(jiff::Timestamp::now().as_second() - 120, Ordering::Relaxed);
        let (code, body) = text(answer(&h, "/healthz", false)).await;
        assert_eq!(code, 500);
        assert!(
            body.contains("[-]syncloop failed") && body.contains("[+]ping ok"),
            "{body}"
        );
        assert_eq!(
            text(answer(&h, "/healthz/ping", false)).await,
            (200, "ok".into())
        );
    }
}
