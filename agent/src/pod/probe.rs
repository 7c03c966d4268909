//! Container probes as kubelet's prober runs them: one task per probe of a running instance,
//! first at `initialDelaySeconds` after the start, then every `periodSeconds`, each try bounded by
//! `timeoutSeconds`; a result changes after `successThreshold` / `failureThreshold` tries in a
//! row. Liveness and readiness wait for the startup probe. The worker hears each change and acts:
//! readiness drives `ready`, a failed liveness or startup probe restarts the container.
//!
//! Results (readiness, startup done) are kept in the pod's `probes.json`, so a restarted agent
//! reports what it knew and restarts nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::action::{self, Action, Outcome, Target};
use crate::node::Node;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    /// As kubelet's events name it.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }

    pub fn lower(self) -> &'static str {
        match self {
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
            Kind::Startup => "startup",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// A probe's timing with the API's defaults (zero means "unset", as defaulting treats it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let or = |v: Option<i32>, default: i32| match v {
            Some(v) if v > 0 => v,
            _ => default,
        };
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: Duration::from_secs(or(p.period_seconds, 10) as u64),
            timeout: Duration::from_secs(or(p.timeout_seconds, 1) as u64),
            success_threshold: or(p.success_threshold, 1) as u32,
            failure_threshold: or(p.failure_threshold, 3) as u32,
        }
    }
}

/// One instance's probe results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Known {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    started: bool,
}

/// Every instance's results, by instance id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Results(HashMap<String, Known>);

impl Results {
    pub fn ready(&self, id: &str) -> bool {
        self.0.get(id).is_some_and(|k| k.ready)
    }

    pub fn started(&self, id: &str) -> bool {
        self.0.get(id).is_some_and(|k| k.started)
    }

    /// Records a result; true when it changed anything.
    pub fn set(&mut self, id: &str, kind: Kind, healthy: bool) -> bool {
        let known = self.0.entry(id.to_owned()).or_default();
        let slot = match kind {
            Kind::Readiness => &mut known.ready,
            Kind::Startup => &mut known.started,
            Kind::Liveness => return false,
        };
        std::mem::replace(slot, healthy) != healthy
    }

    /// Forgets instances that no longer run.
    pub fn retain(&mut self, running: &dyn Fn(&str) -> bool) -> bool {
        let before = self.0.len();
        self.0.retain(|id, _| running(id));
        self.0.len() != before
    }

    pub fn load(path: &std::path::Path) -> Results {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::write_private(path, &serde_json::to_vec(self)?)
    }
}

/// A change a probe task reports to its worker.
#[derive(Debug)]
pub struct Report {
    pub id: String,
    pub container: String,
    pub kind: Kind,
    pub healthy: bool,
}

/// One probe of one running instance.
pub struct Task {
    pub kind: Kind,
    pub action: Action,
    pub timing: Timing,
    pub target: Target,
    pub pod: Arc<Pod>,
    pub container: String,
    /// When the instance started: the first try is `initialDelaySeconds` after it.
    pub started_at: Timestamp,
    /// The result so far (restored after an agent restart, or the kind's initial value: success
    /// for liveness, failure for readiness, unknown for startup).
    pub healthy: Option<bool>,
}

/// Runs the probe until it has nothing more to say: a liveness or startup probe ends at its
/// failure (the container is restarted; a new instance gets new tasks) and a startup probe at
/// its success; the rest run until aborted with the instance.
pub async fn run(task: Task, node: Arc<Node>, reports: mpsc::UnboundedSender<Report>) {
    let Task {
        kind,
        action,
        timing,
        target,
        pod,
        container,
        started_at,
        mut healthy,
    } = task;
    let since_start = Timestamp::now().duration_since(started_at);
    let first = timing
        .initial_delay
        .checked_sub(since_start.unsigned_abs())
        .unwrap_or_default();
    tokio::time::sleep(first).await;
    let (mut last, mut run) = (healthy.unwrap_or(false), 0u32);
    let mut ticks = tokio::time::interval(timing.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let ok = match action::run(&action, &target, Some(timing.timeout), "probe").await {
            Outcome::Success => true,
            Outcome::Warning(message) => {
                let message = format!("{} probe warning: {message}", kind.title());
                node.event(&pod, Some(&container), "ProbeWarning", message, true);
                true
            }
            Outcome::Failure(output) => {
                let message = format!("{} probe failed: {output}", kind.title());
                node.event(&pod, Some(&container), "Unhealthy", message, true);
                false
            }
        };
        run = if ok == last { run + 1 } else { 1 };
        last = ok;
        let threshold = if ok {
            timing.success_threshold
        } else {
            timing.failure_threshold
        };
        if run >= threshold && healthy != Some(ok) {
            healthy = Some(ok);
            let report = Report {
                id: target.id.clone(),
                container: container.clone(),
                kind,
                healthy: ok,
            };
            if reports.send(report).is_err() {
                return;
            }
        }
        match (kind, healthy) {
            (Kind::Liveness | Kind::Startup, Some(false)) => return,
            (Kind::Startup, Some(true)) => return,
            _ => {}
        }
    }
}

/// The probe tasks of a pod's running instances, by instance id and kind.
#[derive(Default)]
pub struct Tasks(HashMap<(String, Kind), tokio::task::JoinHandle<()>>);

impl Tasks {
    pub fn has(&self, id: &str, kind: Kind) -> bool {
        self.0.contains_key(&(id.to_owned(), kind))
    }

    pub fn add(&mut self, id: &str, kind: Kind, handle: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.0.insert((id.to_owned(), kind), handle) {
            old.abort();
        }
    }

    /// Stops the tasks of instances that no longer run.
    pub fn retain(&mut self, running: &dyn Fn(&str) -> bool) {
        self.0.retain(|(id, _), handle| {
            let keep = running(id);
            if !keep {
                handle.abort();
            }
            keep
        });
    }

    pub fn stop(&mut self, id: &str) {
        self.retain(&|other| other != id);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in self.0.values() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_defaults_are_the_apis() {
        let p: Probe = serde_yaml::from_str("{exec: {command: [true]}}").unwrap();
        let t = Timing::of(&p);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let p: Probe = serde_yaml::from_str(
            "{exec: {command: [true]}, initialDelaySeconds: 15, periodSeconds: 2, timeoutSeconds: 3, successThreshold: 2, failureThreshold: 5}",
        )
        .unwrap();
        let t = Timing::of(&p);
        assert_eq!(
            (
                t.initial_delay.as_secs(),
                t.period.as_secs(),
                t.timeout.as_secs()
            ),
            (15, 2, 3)
        );
        assert_eq!((t.success_threshold, t.failure_threshold), (2, 5));
    }

    #[test]
    fn results_change_and_persist() {
        let mut r = Results::default();
        assert!(!r.ready("a") && !r.started("a"));
        assert!(r.set("a", Kind::Readiness, true));
        assert!(!r.set("a", Kind::Readiness, true));
        assert!(r.set("a", Kind::Startup, true));
        assert!(!r.set("a", Kind::Liveness, false));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.json");
        r.save(&path).unwrap();
        assert_eq!(Results::load(&path), r);
        assert!(r.retain(&|id| id != "a"));
        assert!(!r.ready("a"));
    }
}
