//! Lifecycle hooks and termination messages (kubelet's `lifecycle` handlers and
//! `kuberuntime_container.go`): postStart right after a start (a failure kills the instance),
//! preStop before the stop signal, and the message a container leaves at its
//! `terminationMessagePath` (or, with `FallbackToLogsOnError`, the end of its log).

use std::future::Future;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use nodelet_sandbox::protocol;
use tracing::warn;

use super::{grace_period, namespace_name, Desired, Step, Worker};
use crate::paths::NodePaths;
use crate::pod::action::{self, Action, Target};

/// The most of a termination message kept (kubelet's `maxMsgSize`).
const MAX_MESSAGE: usize = 4096;
/// What `FallbackToLogsOnError` takes from the end of the log (kubelet's
/// `MaxContainerTerminationMessageLogLines` and `…LogLength`).
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// The host file bind-mounted at an instance's `terminationMessagePath`.
pub fn termination_path(paths: &NodePaths, uid: &str, id: &str) -> PathBuf {
    paths.pod_root(uid).join("termination").join(id)
}

/// Creates the instance's termination log, writable by any user of the container (kubelet makes
/// it 0666: the container may not run as root).
pub fn termination_log(paths: &NodePaths, uid: &str, id: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = termination_path(paths, uid, id);
    std::fs::create_dir_all(path.parent().expect("termination path has a parent"))?;
    std::fs::write(&path, b"")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
}

/// How kubelet words a failed hook: `Exec lifecycle hook ([cmd]) for Container "c" in Pod
/// "p_ns(uid)" failed - error: …`.
fn hook_failure(action: &Action, container: &str, pod: &str, why: &str) -> String {
    let what = match action {
        Action::Exec(cmd) => format!("Exec lifecycle hook ([{}])", cmd.join(" ")),
        Action::Http(get) => format!("HTTP lifecycle hook ({})", get.path),
        Action::Sleep(d) => format!("Sleep lifecycle hook ({})", d.as_secs()),
        _ => "Lifecycle hook".into(),
    };
    format!("{what} for Container {container:?} in Pod {pod:?} failed - error: {why}")
}

impl Worker {
    pub(super) fn target(&self, id: &str, pid: i32) -> Target {
        Target {
            node: self.node.clone(),
            uid: self.uid.clone(),
            id: id.to_owned(),
            pid,
            pod_ip: self.observed.pod_ip,
        }
    }

    fn pod_label(&self) -> String {
        let (ns, name) = namespace_name(&self.pod);
        format!("{name}_{ns}({})", self.uid)
    }

    /// Runs the container's postStart hook on the instance just started. A failure (or a hook
    /// that cannot run) kills the instance, which is then restarted as its policy says; a
    /// deletion that arrives meanwhile cuts the hook short.
    pub(super) async fn post_start(
        &mut self,
        c: &Container,
        id: &str,
        pid: i32,
        attempt: u32,
    ) -> Step {
        let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return Step::Started;
        };
        let target = self.target(id, pid);
        let outcome = match action::from_hook(handler, c) {
            Ok(hook) => {
                let mut desired = self.desired.clone();
                let deleted = async move {
                    loop {
                        if matches!(*desired.borrow_and_update(), Desired::Delete { .. }) {
                            return;
                        }
                        if desired.changed().await.is_err() {
                            return std::future::pending().await;
                        }
                    }
                };
                tokio::select! {
                    outcome = action::run_hook(&hook, &target) => (hook, outcome),
                    () = deleted => return Step::Started,
                }
            }
            Err(why) => (Action::Exec(Vec::new()), Err(why)),
        };
        let (hook, Err(why)) = outcome else {
            return Step::Started;
        };
        let message = hook_failure(&hook, &c.name, &self.pod_label(), &why);
        warn!(container = %c.name, error = %message, "postStart hook failed");
        // The event does not repeat the hook's output (it may hold secrets); the container's
        // waiting message has it.
        let event = "PostStartHook failed".to_owned();
        self.event(Some(&c.name), "FailedPostStartHook", event, true);
        let record = protocol::ContainerStatus {
            id: id.to_owned(),
            name: c.name.clone(),
            attempt,
            pid,
            started_at: jiff::Timestamp::now(),
            exit: None,
            labels: Default::default(),
        };
        self.kill(
            c,
            &record,
            grace_period(&self.pod),
            "FailedPostStartHook".into(),
        );
        self.observed
            .waiting
            .insert(c.name.clone(), ("PostStartHookError".into(), message));
        Step::Started
    }

    /// The container's preStop hook for this instance, ready to run (its failure recorded as
    /// kubelet's `FailedPreStopHook` event); `None` without one.
    pub(super) fn pre_stop(
        &self,
        c: &Container,
        record: &protocol::ContainerStatus,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let handler: &LifecycleHandler = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
        let target = self.target(&record.id, record.pid);
        let (node, pod) = (self.node.clone(), self.pod.clone());
        let (name, label) = (c.name.clone(), self.pod_label());
        let hook = action::from_hook(handler, c);
        Some(async move {
            let (hook, outcome) = match hook {
                Ok(hook) => {
                    let outcome = action::run_hook(&hook, &target).await;
                    (hook, outcome)
                }
                Err(why) => (Action::Exec(Vec::new()), Err(why)),
            };
            if let Err(why) = outcome {
                let message = hook_failure(&hook, &name, &label, &why);
                warn!(container = %name, error = %message, "preStop hook failed");
                let event = "PreStopHook failed".to_owned();
                node.event(&pod, Some(&name), "FailedPreStopHook", event, true);
            }
        })
    }

    /// Reads the message each newly exited instance left (once: it does not change after the
    /// exit), from its termination log, or with `FallbackToLogsOnError` from its log.
    pub(super) fn read_termination_messages(&mut self) {
        let pod = self.pod.clone();
        let (ns, name) = namespace_name(&pod);
        let paths = &self.node.ctx.paths;
        for i in &self.observed.instances {
            let Some(exit) = &i.record.exit else { continue };
            if i.start_error.is_some() || self.observed.messages.contains_key(&i.record.id) {
                continue;
            }
            let Some((c, _)) =
                crate::pod::status::containers(&pod).find(|(c, _)| c.name == i.record.name)
            else {
                continue;
            };
            let mut message = read_at_most(
                &termination_path(paths, &self.uid, &i.record.id),
                MAX_MESSAGE,
            );
            let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
            if message.is_empty() && fallback && exit.code != 0 {
                let log = paths.container_log(ns, name, &self.uid, &c.name, i.record.attempt);
                message = log_tail(&log);
            }
            self.observed.messages.insert(i.record.id.clone(), message);
        }
    }
}

fn read_at_most(path: &std::path::Path, max: usize) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last 80 lines, at most 2 KiB, of a CRI log file's messages.
fn log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    // Records carry a timestamp and stream each: 64 KiB holds far more than 80 short lines.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut data = Vec::new();
    let _ = f.read_to_end(&mut data);
    let mut text = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        if let Some(record) = nodelet_sandbox::logs::parse_record(line) {
            text.extend_from_slice(record.content);
            if !record.partial {
                text.push(b'\n');
            }
        }
    }
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let kept = lines[lines.len().saturating_sub(FALLBACK_LINES)..].concat();
    let kept = &kept[kept.len().saturating_sub(FALLBACK_BYTES)..];
    String::from_utf8_lossy(kept).into_owned()
}
