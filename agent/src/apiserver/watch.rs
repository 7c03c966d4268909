//! Watches: newline-delimited `{"type": ..., "object": ...}` events for changes after a
//! resourceVersion (or the current state first, as ADDED, when none is given), filtered by
//! namespace and selectors with kube-apiserver's rule that an object entering or leaving the
//! selector is ADDED or DELETED. As Tables, each event is a one-row Table and only the first
//! carries the column definitions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::error::ApiError;
use super::handlers::{self, Selectors};
use super::resource::Resource;
use super::store::{Change, ChangeType, Store};
use super::table;

/// How each event's object is rendered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Render {
    Object,
    /// A one-row Table; the row object is metadata only unless `full`.
    Table {
        full: bool,
    },
}

pub struct WatchRequest {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// Changes after this version; `None` starts with the current objects as ADDED events.
    pub from: Option<u64>,
    /// WatchList: a BOOKMARK marked `k8s.io/initial-events-end` after the initial events.
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub render: Render,
}

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// Starts the watch; the events arrive on the returned channel until the timeout, an error, or
/// the receiver is dropped (the client went away).
pub fn start(store: Arc<Store>, req: WatchRequest) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let (initial, from) = match req.from {
        Some(rv) => (Vec::new(), rv),
        None => handlers::list(
            &store,
            req.resource,
            req.namespace.as_deref(),
            &req.selectors,
        ),
    };
    let (replay, mut live) = store.watch(req.resource, from)?;
    // What one slow client may have queued (16 chunks: a few changes, or a few objects of an
    // initial list; their memory is what a watch costs): then its watch waits, falls behind the changes
    // kept for it, and is ended with 410 as kube-apiserver ends a watcher it cannot feed.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _trim = TrimOnEnd;
        let mut w = Writer {
            req: &req,
            tx: &tx,
            headers: true,
            rv: from,
        };
        for obj in &initial {
            if !w.send("ADDED", obj).await {
                return;
            }
        }
        if req.initial_events_end && !w.bookmark(true).await {
            return;
        }
        for change in &replay {
            if !w.change(change).await {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + req.timeout;
        loop {
            let tick = tokio::time::sleep(BOOKMARK_EVERY);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick => if req.bookmarks && !w.bookmark(false).await { return },
                _ = tx.closed() => return,
                change = live.recv() => match change {
                    Ok(c) if c.resource == req.resource => if !w.change(&c).await { return },
                    Ok(_) => {}
                    // Behind the live feed: caught up from the history, or 410 once behind
                    // that too.
                    Err(broadcast::error::RecvError::Lagged(_)) => match store.watch(req.resource, w.rv) {
                        Ok((replay, resumed)) => {
                            live = resumed;
                            for change in &replay {
                                if !w.change(change).await {
                                    return;
                                }
                            }
                        }
                        Err(_) => {
                            let status = ApiError::gone("the watch fell too far behind; list again").status();
                            let line = json!({"type": "ERROR", "object": status});
                            let _ = tx.send(line_bytes(&line)).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(rx)
}

/// When watches end, the memory their events took is given back to the kernel, once for a burst
/// of them (2 s after the first ends): 300 watchers that each got a 4 MB list otherwise leave
/// the agent at its peak RSS.
struct TrimOnEnd;

impl Drop for TrimOnEnd {
    fn drop(&mut self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        static SCHEDULED: AtomicBool = AtomicBool::new(false);
        if SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            SCHEDULED.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(nodelet_sandbox::sys::release_free_memory).await;
        });
    }
}

fn line_bytes(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).expect("serialise JSON value");
    line.push(b'\n');
    Bytes::from(line)
}

/// `{"type":KIND,"object":JSON}` and a newline, from JSON already made.
fn event_line(kind: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

struct Writer<'a> {
    req: &'a WatchRequest,
    tx: &'a mpsc::Sender<Bytes>,
    headers: bool,
    rv: u64,
}

impl Writer<'_> {
    fn in_scope(&self, obj: &Value) -> bool {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        self.req.namespace.as_deref().is_none_or(|want| want == ns)
            && self.req.selectors.matches(obj)
    }

    async fn change(&mut self, c: &Change) -> bool {
        self.rv = self.rv.max(c.rv);
        let now = self.in_scope(&c.object);
        let before = c.previous.as_deref().is_some_and(|p| self.in_scope(p));
        let kind = match (c.kind, before, now) {
            (ChangeType::Added, _, true) => "ADDED",
            (ChangeType::Modified, true, true) => "MODIFIED",
            (ChangeType::Modified, false, true) => "ADDED",
            (ChangeType::Modified, true, false) => "DELETED",
            (ChangeType::Deleted, _, true) => "DELETED",
            _ => return true,
        };
        if self.req.render == Render::Object {
            // The object's JSON is the one made when it was stored, shared by every watch (a
            // chunk of its own, not a copy): a thousand watches hold one copy of a change.
            let head = Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":"));
            for chunk in [head, c.json.clone(), Bytes::from_static(b"}\n")] {
                if self.tx.send(chunk).await.is_err() {
                    return false;
                }
            }
            return true;
        }
        self.send(kind, &c.object).await
    }

    async fn send(&mut self, kind: &str, obj: &Value) -> bool {
        let object = match self.req.render {
            Render::Object => {
                let json = serde_json::to_vec(obj).expect("serialise JSON value");
                return self.tx.send(event_line(kind, &json)).await.is_ok();
            }
            Render::Table { full } => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                let mut t = table::table(
                    self.req.resource,
                    &[obj],
                    rv,
                    self.headers,
                    Timestamp::now(),
                );
                if full {
                    t["rows"][0]["object"] = obj.clone();
                }
                self.headers = false;
                t
            }
        };
        self.tx
            .send(line_bytes(&json!({"type": kind, "object": object})))
            .await
            .is_ok()
    }

    async fn bookmark(&mut self, initial_end: bool) -> bool {
        let r = self.req.resource;
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": r.kind(), "apiVersion": r.api_version(), "metadata": meta});
        self.tx
            .send(line_bytes(&json!({"type": "BOOKMARK", "object": object})))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watcher that reads nothing while far more changes than the live feed holds are made
    /// catches up from the history when it reads again: every change, in order, no 410.
    #[tokio::test]
    async fn a_watcher_behind_the_live_feed_catches_up_from_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("api.db")).unwrap());
        let req = WatchRequest {
            resource: Resource::ConfigMaps,
            namespace: None,
            selectors: Selectors::parse(Resource::ConfigMaps, Some("app=x"), None).unwrap(),
            from: Some(store.resource_version()),
            initial_events_end: false,
            bookmarks: false,
            timeout: Duration::from_secs(60),
            render: Render::Object,
        };
        let mut rx = start(store.clone(), req).unwrap();
        let n = 1000;
        for i in 0..n {
            let labels = if i % 2 == 0 {
                json!({"app": "x"})
            } else {
                json!({})
            };
            let cm = json!({"metadata": {"name": format!("c{i}"), "namespace": "default", "labels": labels}});
            store.create(Resource::ConfigMaps, cm).unwrap();
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            body.extend_from_slice(&chunk);
            if body.iter().filter(|b| **b == b'\n').count() == n / 2 {
                break;
            }
        }
        let names: Vec<String> = String::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| {
                let e: Value = serde_json::from_str(l).unwrap();
                assert_eq!(e["type"], "ADDED", "{l}");
                e["object"]["metadata"]["name"].as_str().unwrap().to_owned()
            })
            .collect();
        let want: Vec<String> = (0..n).step_by(2).map(|i| format!("c{i}")).collect();
        assert_eq!(names, want);
    }
}
