//! The worker's side of probes: a task for each probe of each running instance (liveness and
//! readiness only once the startup probe passed), and what their reports change.

use std::time::Duration;

use tracing::{info, warn};

use super::{grace_period, Worker};
use crate::pod::action;
use crate::pod::probe::{self, Kind, Report, Timing};
use crate::pod::status;

/// The pod's probe results file, in its directory.
pub const RESULTS: &str = "probes.json";

impl Worker {
    pub(super) fn save_probes(&self) {
        let path = self.node.ctx.paths.pod_root(&self.uid).join(RESULTS);
        if let Err(e) = self.observed.probes.save(&path) {
            warn!(error = %e, "save probe results");
        }
    }

    /// Starts the probe tasks that running instances are missing.
    pub(super) fn sync_probes(&mut self) {
        let pod = self.pod.clone();
        for (c, _) in status::containers(&pod) {
            let Some(i) = self
                .current(&c.name)
                .filter(|i| i.running() && i.start_error.is_none())
                .cloned()
            else {
                continue;
            };
            let id = i.record.id.as_str();
            if self.killing.contains(id) {
                continue;
            }
            let started = c.startup_probe.is_none() || self.observed.probes.started(id);
            let kinds: &[Kind] = if started {
                &[Kind::Liveness, Kind::Readiness]
            } else {
                &[Kind::Startup]
            };
            for &kind in kinds {
                let Some(spec) = kind.of(c) else { continue };
                if self.probe_tasks.has(id, kind) {
                    continue;
                }
                let action = match action::from_probe(spec, c) {
                    Ok(a) => a,
                    Err(why) => {
                        warn!(container = %c.name, probe = kind.lower(), error = %why, "probe cannot run");
                        continue;
                    }
                };
                let task = probe::Task {
                    kind,
                    action,
                    timing: Timing::of(spec),
                    target: self.target(id, i.record.pid),
                    pod: self.pod.clone(),
                    container: c.name.clone(),
                    started_at: i.record.started_at,
                    healthy: match kind {
                        Kind::Liveness => Some(true),
                        Kind::Readiness => Some(self.observed.probes.ready(id)),
                        Kind::Startup => None,
                    },
                };
                let handle =
                    tokio::spawn(probe::run(task, self.node.clone(), self.reports_tx.clone()));
                self.probe_tasks.add(id, kind, handle);
            }
        }
    }

    /// A probe's result changed: readiness and startup are recorded (and kept on disk); a failed
    /// liveness or startup probe restarts the container.
    pub(super) async fn probed(&mut self, report: Report) {
        let Some(c) = status::containers(&self.pod)
            .find(|(c, _)| c.name == report.container)
            .map(|(c, _)| c.clone())
        else {
            return;
        };
        let Some(i) = self
            .current(&c.name)
            .filter(|i| i.record.id == report.id && i.running())
            .cloned()
        else {
            return;
        };
        info!(container = %c.name, probe = report.kind.lower(), healthy = report.healthy, "probe result changed");
        match (report.kind, report.healthy) {
            (Kind::Liveness | Kind::Startup, false) => {
                let grace = report
                    .kind
                    .of(&c)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map(|s| Duration::from_secs(s.max(1) as u64))
                    .unwrap_or_else(|| grace_period(&self.pod));
                // kubelet's wording: a sidecar is an "Init container", and ", will be
                // restarted" only when the pod's policy restarts it.
                let sidecar = status::containers(&self.pod)
                    .any(|(o, role)| o.name == c.name && role == status::Role::Sidecar);
                let never = crate::pod::build::pod_spec(&self.pod)
                    .restart_policy
                    .as_deref()
                    == Some("Never");
                let message = match (sidecar, never) {
                    (true, _) => format!(
                        "Init container {} failed {} probe",
                        c.name,
                        report.kind.lower()
                    ),
                    (false, true) => {
                        format!("Container {} failed {} probe", c.name, report.kind.lower())
                    }
                    (false, false) => format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        report.kind.lower()
                    ),
                };
                self.kill(&c, &i.record, grace, message);
            }
            (kind, healthy) => {
                if self.observed.probes.set(&report.id, kind, healthy) {
                    self.save_probes();
                }
            }
        }
    }
}
