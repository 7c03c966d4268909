//! Container logs as kubelet serves them (`/containerLogs`, the API's `pods/log`): the CRI
//! files of one instance, rotated ones first, with `tailLines`, `sinceTime`/`sinceSeconds`,
//! `timestamps`, `limitBytes`, `previous`, and `follow` across rotations until the container
//! stops.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use nodelet_sandbox::logs::parse_record;
use tokio::sync::mpsc;

use crate::node::Node;

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("pods \"{0}\" not found")]
    PodNotFound(String),
    #[error("container {container} is not valid for pod {pod}")]
    NoContainer { pod: String, container: String },
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious { pod: String, container: String },
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    Waiting {
        pod: String,
        container: String,
        reason: String,
    },
}

impl LogError {
    pub fn http_code(&self) -> u16 {
        match self {
            LogError::PodNotFound(_) => 404,
            _ => 400,
        }
    }
}

/// One instance's log files, oldest first: `<n>.log.<stamp>...`, then the live `<n>.log`.
fn files(live: &Path) -> Vec<PathBuf> {
    let name = live
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(live.parent().unwrap_or(Path::new(".")))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}.")))
        })
        .collect();
    rotated.sort();
    rotated.push(live.to_owned());
    rotated
}

/// Resolves the pod, container and instance, then streams the log into `out` on a blocking
/// thread. Errors before the first byte are returned; later ones just end the stream.
pub async fn stream(
    node: Arc<Node>,
    namespace: &str,
    pod: &str,
    container: &str,
    options: LogOptions,
) -> Result<mpsc::Receiver<Bytes>, LogError> {
    let (uid, attempt) = instance(&node, namespace, pod, container, options.previous)?;
    let live = node
        .ctx
        .paths
        .container_log(namespace, pod, &uid, container, attempt);
    let (tx, rx) = mpsc::channel(16);
    let (ns, name, ctr) = (namespace.to_owned(), pod.to_owned(), container.to_owned());
    let follow = options.follow && !options.previous;
    // "From now on" (attach, `tailLines=0`) is the file's end when the caller asks, not when
    // the blocking thread first runs: what the container writes in between (an attached
    // process answering its first input) would be lost.
    let now = (follow && options.tail_lines == Some(0) && options.since.is_none())
        .then(|| open_at_end(&live))
        .flatten();
    tokio::task::spawn_blocking(move || {
        // The instance read is still the running one.
        let running = || {
            node.find_pod(&ns, &name).is_some_and(|(_, p)| {
                p.status.container_statuses.iter().flatten().any(|c| {
                    c.name == ctr
                        && c.restart_count as u32 == attempt
                        && c.state.as_ref().is_some_and(|s| s.running.is_some())
                })
            })
        };
        let _ = match now {
            Some(at_end) => follow_from(&live, at_end, &mut sink(&tx, &options), &tx, running),
            None => copy(&live, &options, follow, &tx, running),
        };
    });
    Ok(rx)
}

fn instance(
    node: &Node,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(String, u32), LogError> {
    let (_, p) = node
        .find_pod(namespace, pod)
        .ok_or_else(|| LogError::PodNotFound(pod.to_owned()))?;
    let known = p.pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == container)
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !known {
        return Err(LogError::NoContainer {
            pod: pod.to_owned(),
            container: container.to_owned(),
        });
    }
    let status = crate::pod::status::find(&p.status, container)
        .cloned()
        .unwrap_or_default();
    let uid = p.pod.metadata.uid.clone().unwrap_or_default();
    if previous {
        if status
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_none()
        {
            return Err(LogError::NoPrevious {
                pod: pod.to_owned(),
                container: container.to_owned(),
            });
        }
        return Ok((uid, (status.restart_count - 1).max(0) as u32));
    }
    if status.container_id.is_none() {
        let reason = status
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
            .unwrap_or_else(|| "ContainerCreating".into());
        return Err(LogError::Waiting {
            pod: pod.to_owned(),
            container: container.to_owned(),
            reason,
        });
    }
    Ok((uid, status.restart_count.max(0) as u32))
}

/// Output with `limitBytes` counted; false once the limit is hit or the reader went away.
struct Sink<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    left: Option<u64>,
    timestamps: bool,
}

impl Sink<'_> {
    fn line(&mut self, raw: &[u8]) -> bool {
        let Some(record) = parse_record(raw) else {
            return true;
        };
        let mut text = Vec::with_capacity(record.content.len() + 40);
        if self.timestamps {
            text.extend_from_slice(record.timestamp.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(record.content);
        if !record.partial {
            text.push(b'\n');
        }
        if let Some(left) = &mut self.left {
            if *left == 0 {
                return false;
            }
            text.truncate((*left).min(text.len() as u64) as usize);
            *left -= text.len() as u64;
        }
        self.tx.blocking_send(Bytes::from(text)).is_ok() && self.left != Some(0)
    }
}

fn since_ok(raw: &[u8], since: Option<Timestamp>) -> bool {
    match (since, parse_record(raw)) {
        (Some(since), Some(r)) => r.timestamp.parse::<Timestamp>().is_ok_and(|t| t >= since),
        _ => true,
    }
}

type Live = (BufReader<File>, u64);

fn open(live: &Path) -> Option<Live> {
    let f = File::open(live).ok()?;
    let inode = f.metadata().ok()?.ino();
    Some((BufReader::new(f), inode))
}

fn open_at_end(live: &Path) -> Option<Live> {
    let (mut reader, inode) = open(live)?;
    reader.seek(SeekFrom::End(0)).ok()?;
    Some((reader, inode))
}

fn sink<'a>(tx: &'a mpsc::Sender<Bytes>, o: &LogOptions) -> Sink<'a> {
    Sink {
        tx,
        left: o.limit_bytes,
        timestamps: o.timestamps,
    }
}

fn copy(
    live: &Path,
    o: &LogOptions,
    follow: bool,
    tx: &mpsc::Sender<Bytes>,
    running: impl Fn() -> bool,
) -> std::io::Result<()> {
    let mut sink = sink(tx, o);
    let paths = files(live);
    // The whole lines already written (all files), cut to the tail asked for.
    let mut tail: VecDeque<Vec<u8>> = VecDeque::new();
    let mut current: Option<Live> = None;
    for path in &paths {
        let Ok(file) = File::open(path) else { continue };
        let inode = file.metadata()?.ino();
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                reader.seek(SeekFrom::Current(-(n as i64)))?;
                break;
            }
            if !since_ok(&line, o.since) {
                continue;
            }
            tail.push_back(line.clone());
            if let Some(max) = o.tail_lines {
                while tail.len() > max {
                    tail.pop_front();
                }
            } else if tail.len() > 1024 {
                // No tail asked for: send as we go rather than hold the file in memory.
                for l in tail.drain(..) {
                    if !sink.line(&l) {
                        return Ok(());
                    }
                }
            }
        }
        if path == live {
            current = Some((reader, inode));
        }
    }
    for l in tail.drain(..) {
        if !sink.line(&l) {
            return Ok(());
        }
    }
    match current {
        Some(at) if follow => follow_from(live, at, &mut sink, tx, running),
        _ if follow => follow_new(live, &mut sink, tx, running),
        _ => Ok(()),
    }
}

/// Follows a live file that does not exist yet, once it does.
fn follow_new(
    live: &Path,
    sink: &mut Sink,
    tx: &mpsc::Sender<Bytes>,
    running: impl Fn() -> bool,
) -> std::io::Result<()> {
    loop {
        if let Some(at) = open(live) {
            return follow_from(live, at, sink, tx, running);
        }
        if tx.is_closed() || !running() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends each line written to the live file from `current` on, across rotations, until the
/// instance stops or the receiver goes.
fn follow_from(
    live: &Path,
    current: Live,
    sink: &mut Sink,
    tx: &mpsc::Sender<Bytes>,
    running: impl Fn() -> bool,
) -> std::io::Result<()> {
    let mut current = Some(current);
    let mut idle = 0u32;
    let mut line = Vec::new();
    loop {
        let Some((reader, inode)) = current.as_mut() else {
            // The live file does not exist yet.
            std::thread::sleep(Duration::from_millis(100));
            current = File::open(live)
                .ok()
                .and_then(|f| Some((f.metadata().ok()?.ino(), f)))
                .map(|(i, f)| (BufReader::new(f), i));
            if tx.is_closed() || (current.is_none() && !running()) {
                return Ok(());
            }
            continue;
        };
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 && line.ends_with(b"\n") {
            idle = 0;
            if !sink.line(&line) {
                return Ok(());
            }
            continue;
        }
        if n > 0 {
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        // At the end of what was written: a rotation replaces the file under the same name.
        let rotated = std::fs::metadata(live)
            .map(|m| m.ino() != *inode)
            .unwrap_or(false);
        if rotated {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            for l in rest.split_inclusive(|b| *b == b'\n') {
                if !sink.line(l) {
                    return Ok(());
                }
            }
            current = File::open(live)
                .ok()
                .and_then(|f| Some((f.metadata().ok()?.ino(), f)))
                .map(|(i, f)| (BufReader::new(f), i));
            continue;
        }
        if tx.is_closed() {
            return Ok(());
        }
        idle += 1;
        if idle.is_multiple_of(5) && !running() {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            for l in rest.split_inclusive(|b| *b == b'\n') {
                if !sink.line(l) {
                    return Ok(());
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(live: &Path, o: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(1024);
        copy(live, &o, false, &tx, || false).unwrap();
        drop(tx);
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rotated_files_then_live_with_tail_since_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        std::fs::write(
            dir.path().join("0.log.20260101-000001"),
            "2026-01-01T00:00:00Z stdout F one\n2026-01-01T00:00:01Z stdout F two\n",
        )
        .unwrap();
        std::fs::write(&live, "2026-01-01T00:00:02Z stdout P thr\n2026-01-01T00:00:02Z stdout F ee\n2026-01-01T00:00:03Z stderr F four\n2026-01-01T00:00:04Z stdout F unfin").unwrap();
        assert_eq!(
            collect(&live, LogOptions::default()),
            "one\ntwo\nthree\nfour\n"
        );
        assert_eq!(
            collect(
                &live,
                LogOptions {
                    tail_lines: Some(2),
                    ..Default::default()
                }
            ),
            "ee\nfour\n"
        );
        let since = "2026-01-01T00:00:02Z".parse().unwrap();
        assert_eq!(
            collect(
                &live,
                LogOptions {
                    since: Some(since),
                    ..Default::default()
                }
            ),
            "three\nfour\n"
        );
        assert_eq!(
            collect(
                &live,
                LogOptions {
                    limit_bytes: Some(6),
                    ..Default::default()
                }
            ),
            "one\ntw"
        );
        assert!(collect(
            &live,
            LogOptions {
                timestamps: true,
                ..Default::default()
            }
        )
        .starts_with("2026-01-01T00:00:00Z one\n"));
    }
}
