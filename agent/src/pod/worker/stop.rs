//! Stopping a pod's containers within its grace period, as kubelet's `killPod` does:
//!
//! ```text
//!  t=0   "Killing" events; every preStop hook starts (each bounded by the grace period)
//!  ...   each container gets its stop signal (the image's, or SIGTERM) once its hook is done
//!        and, for a sidecar, once the app containers and the sidecars after it have exited;
//!        a shorter grace that arrives brings the deadline forward (never back)
//!  t=G   SIGKILL to whatever still runs (at least 2 s after a stop signal that a hook delayed),
//!        then up to KILL_WAIT for the exits
//! ```
//!
//! A shim that does not answer is asked again (a slow shim is not "everything stopped"). The
//! steps talk to the shim through `Containers`, so that the timing is unit-tested against a fake
//! on tokio's paused clock.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use nodelet_sandbox::protocol::ContainerStatus;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::containers::MIN_GRACE;
use super::Desired;

/// A preStop hook, ready to run.
pub(super) type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long after SIGKILL to wait for exits before the sandbox is torn down anyway.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a shim that did not answer is asked again, and exits are looked for.
const POLL: Duration = Duration::from_millis(500);

/// What stopping needs from the pod's shim.
#[allow(async_fn_in_trait)] // used generically, never as `dyn`
pub(super) trait Containers {
    /// The running instances; `None` when the shim did not answer but still runs.
    async fn running(&mut self) -> Option<Vec<ContainerStatus>>;
    /// `signal` to each, or each one's stop signal when `None`.
    async fn signal(&mut self, running: &[ContainerStatus], signal: Option<i32>);
    /// Resolves when the shim reports an exit (or never, without an event stream).
    async fn exited(&mut self);
    /// Records that the container is being stopped (kubelet's `Killing` event).
    fn stopping(&mut self, c: &ContainerStatus);
    /// The container's preStop hook, if it has one.
    fn pre_stop(&mut self, c: &ContainerStatus) -> Option<Hook>;
    /// The containers (by name) that must have exited before `c` gets its stop signal.
    fn waits_for(&self, c: &ContainerStatus) -> Vec<String>;
}

#[derive(Debug, PartialEq)]
pub(super) enum Stopped {
    /// Every container exited (within the grace, or after SIGKILL).
    Exited,
    /// Something still ran KILL_WAIT after SIGKILL.
    Stuck,
    /// The worker's channel closed: the agent is stopping, and the pod stays as it is.
    Abandoned,
}

/// Stops every container within `grace`; a `Desired::Delete` with a shorter grace arriving on
/// `rx` meanwhile brings the deadline forward.
pub(super) async fn stop_within(
    containers: &mut impl Containers,
    grace: Duration,
    rx: &mut watch::Receiver<Desired>,
) -> Stopped {
    let mut deadline = Instant::now() + grace;
    let mut kill_at = deadline;
    let (hook_done, mut hooks_done) = mpsc::unbounded_channel::<String>();
    // Instances whose stop began (event, hook), whose hook still runs, that had a hook, and
    // that were signalled.
    let (mut began, mut hooking, mut hooked, mut signalled) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    loop {
        while let Ok(id) = hooks_done.try_recv() {
            hooking.remove(&id);
        }
        if Instant::now() >= deadline {
            // Hooks are cut at the end of the grace period.
            hooking.clear();
        }
        match containers.running().await {
            Some(running) if running.is_empty() => return Stopped::Exited,
            Some(running) => {
                for c in &running {
                    if !began.insert(c.id.clone()) {
                        continue;
                    }
                    containers.stopping(c);
                    if let Some(hook) = containers.pre_stop(c) {
                        let (id, done) = (c.id.clone(), hook_done.clone());
                        hooking.insert(id.clone());
                        hooked.insert(id.clone());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout_at(deadline, hook).await;
                            let _ = done.send(id);
                        });
                    }
                }
                let names: HashSet<&str> = running.iter().map(|c| c.name.as_str()).collect();
                let due: Vec<ContainerStatus> = running
                    .iter()
                    .filter(|c| !signalled.contains(&c.id) && !hooking.contains(&c.id))
                    .filter(|c| {
                        containers
                            .waits_for(c)
                            .iter()
                            .all(|n| !names.contains(n.as_str()))
                    })
                    .cloned()
                    .collect();
                if !due.is_empty() {
                    containers.signal(&due, None).await;
                    for c in due {
                        if hooked.contains(&c.id) {
                            kill_at = kill_at.max(Instant::now() + MIN_GRACE);
                        }
                        signalled.insert(c.id);
                    }
                }
            }
            None => {}
        }
        if Instant::now() >= kill_at {
            break;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Stopped::Abandoned;
                }
                if let Desired::Delete { grace: Some(g) } = *rx.borrow_and_update() {
                    deadline = deadline.min(Instant::now() + g);
                    kill_at = kill_at.min(deadline);
                }
            }
            () = containers.exited() => {}
            Some(id) = hooks_done.recv() => {
                hooking.remove(&id);
            }
            () = tokio::time::sleep_until(kill_at.min(Instant::now() + POLL)) => {}
        }
    }
    tracing::info!("grace period over; killing");
    let running = containers.running().await.unwrap_or_default();
    containers.signal(&running, Some(libc::SIGKILL)).await;
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline {
        match containers.running().await {
            Some(running) if running.is_empty() => return Stopped::Exited,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Stopped::Stuck
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    /// A container of the fake: exits this long after the stop signal (never if `None`), and
    /// always at SIGKILL.
    struct Fake {
        term_exit: Vec<Option<Duration>>,
        start: Instant,
        /// When each container exits, once signalled.
        exits: Vec<Option<Instant>>,
        /// (time since start, container, signal) of every signal sent.
        sent: Vec<(Duration, usize, i32)>,
        /// The shim does not answer until this long after start.
        silent_for: Duration,
        /// How long each container's preStop hook takes (none if `None`).
        hooks: Vec<Option<Duration>>,
        /// What each container waits for (by name) before its stop signal.
        after: Vec<Vec<String>>,
    }

    impl Fake {
        fn new(term_exit: Vec<Option<Duration>>) -> Fake {
            let n = term_exit.len();
            Fake {
                term_exit,
                start: Instant::now(),
                exits: vec![None; n],
                sent: Vec::new(),
                silent_for: Duration::ZERO,
                hooks: vec![None; n],
                after: vec![Vec::new(); n],
            }
        }

        fn status(i: usize) -> ContainerStatus {
            ContainerStatus {
                id: i.to_string(),
                name: format!("c{i}"),
                attempt: 0,
                pid: 100 + i as i32,
                started_at: Timestamp::UNIX_EPOCH,
                exit: None,
                labels: Default::default(),
            }
        }
    }

    impl Containers for Fake {
        async fn running(&mut self) -> Option<Vec<ContainerStatus>> {
            if self.start.elapsed() < self.silent_for {
                return None;
            }
            let now = Instant::now();
            Some(
                (0..self.exits.len())
                    .filter(|i| self.exits[*i].is_none_or(|at| at > now))
                    .map(Fake::status)
                    .collect(),
            )
        }

        async fn signal(&mut self, running: &[ContainerStatus], signal: Option<i32>) {
            for c in running {
                let i: usize = c.id.parse().unwrap();
                let signal = signal.unwrap_or(libc::SIGTERM);
                self.sent.push((self.start.elapsed(), i, signal));
                let after = match signal {
                    libc::SIGKILL => Some(Duration::ZERO),
                    _ => self.term_exit[i],
                };
                if let Some(after) = after {
                    let at = Instant::now() + after;
                    self.exits[i] = Some(self.exits[i].map_or(at, |old| old.min(at)));
                }
            }
        }

        async fn exited(&mut self) {
            let now = Instant::now();
            match self.exits.iter().flatten().filter(|at| **at > now).min() {
                Some(at) => tokio::time::sleep_until(*at).await,
                None => std::future::pending().await,
            }
        }

        fn stopping(&mut self, _: &ContainerStatus) {}

        fn pre_stop(&mut self, c: &ContainerStatus) -> Option<Hook> {
            let i: usize = c.id.parse().unwrap();
            let took = self.hooks[i]?;
            Some(Box::pin(tokio::time::sleep(took)))
        }

        fn waits_for(&self, c: &ContainerStatus) -> Vec<String> {
            self.after[c.id.parse::<usize>().unwrap()].clone()
        }
    }

    fn channel() -> (watch::Sender<Desired>, watch::Receiver<Desired>) {
        watch::channel(Desired::Delete { grace: None })
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn a_container_that_ignores_sigterm_is_killed_at_the_end_of_the_grace() {
        let mut fake = Fake::new(vec![None, Some(S(1))]);
        let (_tx, mut rx) = channel();
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Exited
        );
        assert_eq!(
            fake.sent,
            [
                (S(0), 0, libc::SIGTERM),
                (S(0), 1, libc::SIGTERM),
                (S(30), 0, libc::SIGKILL)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn containers_that_exit_in_time_are_never_killed() {
        let mut fake = Fake::new(vec![Some(S(2)), Some(S(3))]);
        let (_tx, mut rx) = channel();
        let started = Instant::now();
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Exited
        );
        assert!(fake.sent.iter().all(|(_, _, s)| *s == libc::SIGTERM));
        // Done when the last one exits, not at the end of the grace.
        assert!(started.elapsed() < S(4), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_grace_brings_the_kill_forward_and_a_longer_one_does_not_delay_it() {
        let mut fake = Fake::new(vec![None]);
        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            tokio::time::sleep(S(5)).await;
            tx.send_replace(Desired::Delete { grace: Some(S(2)) });
            tokio::time::sleep(S(1)).await;
            tx.send_replace(Desired::Delete { grace: Some(S(60)) });
            std::future::pending::<()>().await;
        });
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Exited
        );
        assert_eq!(
            fake.sent,
            [(S(0), 0, libc::SIGTERM), (S(7), 0, libc::SIGKILL)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shim_that_does_not_answer_is_signalled_once_it_does() {
        let mut fake = Fake::new(vec![None]);
        fake.silent_for = S(3);
        let (_tx, mut rx) = channel();
        assert_eq!(
            stop_within(&mut fake, S(10), &mut rx).await,
            Stopped::Exited
        );
        let (term_at, _, term) = fake.sent[0];
        assert_eq!(term, libc::SIGTERM);
        assert!(term_at >= S(3) && term_at < S(4), "{term_at:?}");
        assert_eq!(fake.sent[1], (S(10), 0, libc::SIGKILL));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_stops_leaves_the_pod_alone() {
        let mut fake = Fake::new(vec![None]);
        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            tokio::time::sleep(S(1)).await;
            drop(tx);
        });
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Abandoned
        );
        assert_eq!(fake.sent, [(S(0), 0, libc::SIGTERM)]);
    }

    #[tokio::test(start_paused = true)]
    async fn pre_stop_hooks_run_before_the_stop_signal_and_count_against_the_grace() {
        // c0's hook takes 5 s; c1 has none and is signalled at once.
        let mut fake = Fake::new(vec![Some(S(1)), Some(S(1))]);
        fake.hooks[0] = Some(S(5));
        let (_tx, mut rx) = channel();
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Exited
        );
        assert_eq!(
            fake.sent,
            [(S(0), 1, libc::SIGTERM), (S(5), 0, libc::SIGTERM)]
        );
        // A hook that outlasts the grace is cut at its end; the stop signal still gets 2 s.
        let mut fake = Fake::new(vec![None]);
        fake.hooks[0] = Some(S(60));
        let (_tx, mut rx) = channel();
        assert_eq!(
            stop_within(&mut fake, S(10), &mut rx).await,
            Stopped::Exited
        );
        assert_eq!(
            fake.sent,
            [(S(10), 0, libc::SIGTERM), (S(12), 0, libc::SIGKILL)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sidecars_stop_after_the_app_containers_in_reverse_order() {
        // c0 and c1 are sidecars (c1 after c0 in the pod), c2 the app container.
        let mut fake = Fake::new(vec![Some(S(1)), Some(S(1)), Some(S(3))]);
        fake.after[0] = vec!["c1".into(), "c2".into()];
        fake.after[1] = vec!["c2".into()];
        let (_tx, mut rx) = channel();
        assert_eq!(
            stop_within(&mut fake, S(30), &mut rx).await,
            Stopped::Exited
        );
        assert_eq!(
            fake.sent,
            [
                (S(0), 2, libc::SIGTERM),
                (S(3), 1, libc::SIGTERM),
                (S(4), 0, libc::SIGTERM)
            ]
        );
    }
}
