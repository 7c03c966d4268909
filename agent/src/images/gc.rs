//! Image garbage collection as kubelet's image manager does it: when the image filesystem is
//! fuller than the high threshold, unused images are removed, least recently used first, until
//! it is back under the low one. An image a pod on the node names is never removed, nor one
//! younger than the minimum age, nor anything while a pull is running.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::store::ImageStore;

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub minimum_age: Duration,
}

impl Policy {
    pub fn new(config: &crate::config::Config) -> Policy {
        Policy {
            high_percent: config.image_gc_high_threshold_percent,
            low_percent: config.image_gc_low_threshold_percent,
            minimum_age: config.image_minimum_gc_age,
        }
    }
}

fn percent_used((capacity, available): (u64, u64)) -> u64 {
    if capacity == 0 {
        return 0;
    }
    100 - available.saturating_mul(100) / capacity
}

/// One collection: returns the references removed. `in_use` holds manifest digests.
pub fn collect(
    store: &ImageStore,
    policy: Policy,
    in_use: &HashSet<String>,
) -> Result<Vec<String>, super::store::Error> {
    let swept = store.sweep_tmp();
    if swept > 0 {
        info!(entries = swept, "removed work left by interrupted pulls");
    }
    let usage = store.usage()?;
    let used = percent_used(usage);
    if used < u64::from(policy.high_percent) {
        return Ok(Vec::new());
    }
    info!(
        used_percent = used,
        high = policy.high_percent,
        low = policy.low_percent,
        "image filesystem over its high threshold: removing unused images"
    );
    // Least recently used first.
    let mut candidates: Vec<(SystemTime, String, Vec<String>)> = store
        .list()?
        .into_iter()
        .filter(|image| !in_use.contains(&image.digest))
        .map(|image| {
            let last_used = image.last_used.unwrap_or(SystemTime::UNIX_EPOCH);
            (last_used, image.digest, image.names)
        })
        .collect();
    candidates.sort();
    let mut removed = Vec::new();
    for (last_used, digest, names) in candidates {
        if percent_used(store.usage()?) <= u64::from(policy.low_percent) {
            break;
        }
        if last_used.elapsed().unwrap_or_default() < policy.minimum_age {
            continue;
        }
        match store.remove(&digest) {
            Ok(()) => {
                info!(images = ?names, digest = %digest, "removed unused image");
                removed.extend(names);
            }
            Err(e) => warn!(digest = %digest, error = %crate::error_chain(&e), "remove image"),
        }
    }
    let left = percent_used(store.usage()?);
    if left > u64::from(policy.low_percent) {
        warn!(
            used_percent = left,
            low = policy.low_percent,
            "image filesystem still over its low threshold: what is left is in use or too young"
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_used_counts_what_is_not_available() {
        assert_eq!(percent_used((1000, 150)), 85);
        assert_eq!(percent_used((1000, 1000)), 0);
        assert_eq!(percent_used((1000, 0)), 100);
        assert_eq!(percent_used((0, 0)), 0);
    }
}
