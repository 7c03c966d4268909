//! CrashLoopBackOff as kubelet computes it (client-go `flowcontrol.Backoff` used by `doBackOff`):
//! 10 s doubling to 300 s, keyed by container and spec hash, reset once an instance ran for
//! 2 × 300 s since the last restart. Times are passed in, so tests need no clock.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: Timestamp,
}

#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<String, Entry>,
}

fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(earlier)).unwrap_or(Duration::ZERO)
}

fn expired(event: Timestamp, last_update: Timestamp) -> bool {
    since(event, last_update) > 2 * MAX
}

impl Backoff {
    /// How much longer a restart must wait, if the key is in backoff since `finished_at`.
    pub fn remaining(&self, key: &str, finished_at: Timestamp, now: Timestamp) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if expired(finished_at, entry.last_update) {
            return None;
        }
        let waited = since(now, finished_at);
        (waited < entry.backoff).then(|| entry.backoff - waited)
    }

    /// How much longer to wait when the last failure was the last update (image pulls:
    /// kubelet's `IsInBackOffSinceUpdate`).
    pub fn remaining_since_update(&self, key: &str, now: Timestamp) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let waited = since(now, entry.last_update);
        (waited < entry.backoff).then(|| entry.backoff - waited)
    }

    /// The current backoff of a key (for the waiting message).
    pub fn current(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.backoff)
    }

    /// Records a restart at `now` of an instance that finished at `finished_at`.
    pub fn next(&mut self, key: &str, finished_at: Timestamp, now: Timestamp) {
        let entry = match self.entries.get(key) {
            Some(e) if !expired(finished_at, e.last_update) => Entry {
                backoff: (e.backoff * 2).min(MAX),
                last_update: now,
            },
            _ => Entry {
                backoff: INITIAL,
                last_update: now,
            },
        };
        self.entries.insert(key.to_owned(), entry);
    }

    /// Forgets entries idle for longer than the reset threshold.
    pub fn gc(&mut self, now: Timestamp) {
        self.entries.retain(|_, e| !expired(now, e.last_update));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    /// Crash immediately after each restart and restart as soon as allowed: the waits are
    /// 0, 10, 20, 40, 80, 160, 300, 300 seconds, as kubelet's.
    #[test]
    fn doubling_curve_capped_at_five_minutes() {
        let mut b = Backoff::default();
        let mut now = at(0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let finished = now;
            let wait = b.remaining("k", finished, now).unwrap_or(Duration::ZERO);
            waits.push(wait.as_secs());
            now += jiff::SignedDuration::try_from(wait).unwrap();
            assert_eq!(b.remaining("k", finished, now), None);
            b.next("k", finished, now);
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn long_run_resets_the_curve() {
        let mut b = Backoff::default();
        b.next("k", at(0), at(0));
        b.next("k", at(1), at(11));
        assert_eq!(b.current("k"), Some(Duration::from_secs(20)));
        // The next instance runs for more than 10 minutes before it exits.
        let finished = at(11 + 601);
        assert_eq!(b.remaining("k", finished, finished), None);
        b.next("k", finished, finished);
        assert_eq!(b.current("k"), Some(INITIAL));
    }

    #[test]
    fn keys_are_independent_and_gc_forgets_idle_ones() {
        let mut b = Backoff::default();
        b.next("a", at(0), at(0));
        assert!(b.remaining("a", at(1), at(2)).is_some());
        assert!(b.remaining("b", at(1), at(2)).is_none());
        b.gc(at(700));
        assert_eq!(b.current("a"), None);
    }
}
