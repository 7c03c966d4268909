//! kubelet's event recorder (client-go's `EventCorrelator`), between the pod workers and the
//! API: Events named `<object>.<hex UnixNano>` so that lists sort them in time order, a repeat
//! of the same event counted into the Event first posted (`count`, `lastTimestamp`), ten or more
//! different messages of one reason about one object within ten minutes combined into one
//! Event, and at most 25 Events about one object at once, refilled one per five minutes.
//!
//! A crash-looping container thus leaves one `BackOff` Event whose count grows, not thousands.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use crate::node::PodEvent;

/// client-go's LRU size for each of its caches; here the oldest entries go past it.
const CACHE_ENTRIES: usize = 4096;
/// Different messages of one reason about one object before they are combined.
const AGGREGATE_MAX_EVENTS: usize = 10;
const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
const SPAM_BURST: f64 = 25.0;
/// Tokens per second: one Event every five minutes once the burst is spent.
const SPAM_QPS: f64 = 1.0 / 300.0;

/// An Event's name as client-go makes it, `<object>.<hex UnixNano>`: the same length for the
/// next two centuries, so name order is time order. Names are unique within the process (a
/// second event in the same nanosecond is named for the next one).
pub fn name(object: &str, at: Timestamp) -> String {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let wanted = at.as_nanosecond() as i64;
    let mut last = LAST.load(Ordering::Relaxed);
    let nanos = loop {
        let next = wanted.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(now) => last = now,
        }
    };
    format!("{object}.{nanos:x}")
}

/// What to send for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// A new Event.
    Create(Posted),
    /// The Event `posted.name` seen before: patch its count, last timestamp and message (or
    /// create it again under that name if it is gone).
    Update(Posted),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub name: String,
    pub message: String,
    pub count: i32,
    pub first: Timestamp,
}

/// Identical events (same object, container, type, reason and message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventKey {
    uid: String,
    field_path: Option<String>,
    warning: bool,
    reason: &'static str,
    /// The message, or `None` for the combined Event of an aggregate.
    message: Option<String>,
}

/// Similar events (same object, type and reason).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AggregateKey {
    uid: String,
    warning: bool,
    reason: &'static str,
}

struct Aggregate {
    messages: HashSet<String>,
    last: Timestamp,
}

struct Observed {
    name: String,
    count: i32,
    first: Timestamp,
    used: Timestamp,
}

struct Bucket {
    tokens: f64,
    at: Timestamp,
}

#[derive(Default)]
pub struct Correlator {
    aggregates: HashMap<AggregateKey, Aggregate>,
    observed: HashMap<EventKey, Observed>,
    /// Token buckets per object (the source is this node's kubelet for all of them).
    buckets: HashMap<String, Bucket>,
}

impl Correlator {
    /// What to post for `ev` happening at `now`, or `None` when the object's budget is spent.
    pub fn correlate(&mut self, ev: &PodEvent, now: Timestamp) -> Option<Send> {
        let (key, message) = self.aggregate(ev, now);
        let send = self.observe(key, &ev.name, message, now);
        self.allowed(&ev.uid, now).then_some(send)
    }

    /// The key the event counts under and its message: its own, or once similar events with
    /// many messages were seen, the combined Event's.
    fn aggregate(&mut self, ev: &PodEvent, now: Timestamp) -> (EventKey, String) {
        let own = EventKey {
            uid: ev.uid.clone(),
            field_path: ev.field_path.clone(),
            warning: ev.warning,
            reason: ev.reason,
            message: Some(ev.message.clone()),
        };
        let key = AggregateKey {
            uid: ev.uid.clone(),
            warning: ev.warning,
            reason: ev.reason,
        };
        bound(&mut self.aggregates, |a| a.last);
        let record = self.aggregates.entry(key).or_insert_with(|| Aggregate {
            messages: HashSet::new(),
            last: now,
        });
        if elapsed(record.last, now) > AGGREGATE_INTERVAL {
            record.messages.clear();
        }
        record.last = now;
        record.messages.insert(ev.message.clone());
        if record.messages.len() < AGGREGATE_MAX_EVENTS {
            return (own, ev.message.clone());
        }
        // Keep the set at its bound, as client-go pops one.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let combined = EventKey {
            field_path: None,
            message: None,
            ..own
        };
        (
            combined,
            format!("(combined from similar events): {}", ev.message),
        )
    }

    fn observe(&mut self, key: EventKey, object: &str, message: String, now: Timestamp) -> Send {
        bound(&mut self.observed, |o| o.used);
        match self.observed.get_mut(&key) {
            Some(seen) => {
                seen.count = seen.count.saturating_add(1);
                seen.used = now;
                Send::Update(Posted {
                    name: seen.name.clone(),
                    message,
                    count: seen.count,
                    first: seen.first,
                })
            }
            None => {
                let posted = Posted {
                    name: name(object, now),
                    message,
                    count: 1,
                    first: now,
                };
                self.observed.insert(
                    key,
                    Observed {
                        name: posted.name.clone(),
                        count: 1,
                        first: now,
                        used: now,
                    },
                );
                Send::Create(posted)
            }
        }
    }

    /// The per-object token bucket (client-go's spam filter).
    fn allowed(&mut self, uid: &str, now: Timestamp) -> bool {
        bound(&mut self.buckets, |b| b.at);
        let bucket = self.buckets.entry(uid.to_owned()).or_insert(Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        let refill = elapsed(bucket.at, now).as_secs_f64() * SPAM_QPS;
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// Keeps a cache at `CACHE_ENTRIES`: when full, the least recently used tenth goes.
fn bound<K: Eq + std::hash::Hash + Clone, V>(
    cache: &mut HashMap<K, V>,
    used: impl Fn(&V) -> Timestamp,
) {
    if cache.len() < CACHE_ENTRIES {
        return;
    }
    let mut ages: Vec<Timestamp> = cache.values().map(&used).collect();
    ages.sort_unstable();
    let cutoff = ages[CACHE_ENTRIES / 10];
    cache.retain(|_, v| used(v) > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &'static str, message: &str) -> PodEvent {
        PodEvent {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            field_path: Some("spec.containers{app}".into()),
            reason,
            message: message.into(),
            warning: true,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn names_sort_in_time_order_and_never_repeat() {
        let a = name("web", at(0));
        let b = name("web", at(0));
        let c = name("web", at(1));
        assert!(a.starts_with("web.") && a.len() == "web.".len() + 16, "{a}");
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn a_repeated_event_is_counted_into_the_first() {
        let mut c = Correlator::default();
        let Some(Send::Create(first)) = c.correlate(&event("BackOff", "back-off"), at(0)) else {
            panic!("the first event is created");
        };
        let Some(Send::Update(again)) = c.correlate(&event("BackOff", "back-off"), at(10)) else {
            panic!("the repeat updates it");
        };
        assert_eq!(again.name, first.name);
        assert_eq!((again.count, again.first), (2, at(0)));
        // Another container's event is another Event.
        let mut other = event("BackOff", "back-off");
        other.field_path = Some("spec.containers{side}".into());
        assert!(matches!(c.correlate(&other, at(11)), Some(Send::Create(_))));
    }

    #[test]
    fn many_messages_of_one_reason_are_combined() {
        let mut c = Correlator::default();
        let mut sent = Vec::new();
        for i in 0..12 {
            sent.push(
                c.correlate(&event("Failed", &format!("try {i}")), at(i))
                    .unwrap(),
            );
        }
        // Nine of their own, then one combined Event counted on.
        assert!(sent[..9].iter().all(|s| matches!(s, Send::Create(_))));
        let Send::Create(combined) = &sent[9] else {
            panic!("the tenth starts the combined Event: {:?}", sent[9]);
        };
        assert_eq!(combined.message, "(combined from similar events): try 9");
        let Send::Update(last) = &sent[11] else {
            panic!("later ones count into it");
        };
        assert_eq!(
            (last.name.as_str(), last.count),
            (combined.name.as_str(), 3)
        );
        // Ten minutes later the set starts again.
        assert!(matches!(
            c.correlate(&event("Failed", "try 12"), at(11 + 601)),
            Some(Send::Create(p)) if p.message == "try 12"
        ));
    }

    #[test]
    fn an_object_may_burst_25_events_then_one_per_five_minutes() {
        let mut c = Correlator::default();
        let sent = (0..30)
            .filter(|i| {
                c.correlate(&event("Killing", &format!("{i}")), at(0))
                    .is_some()
            })
            .count();
        assert_eq!(sent, 25);
        assert!(c.correlate(&event("Killing", "x"), at(299)).is_none());
        assert!(c.correlate(&event("Killing", "y"), at(301)).is_some());
    }
}
