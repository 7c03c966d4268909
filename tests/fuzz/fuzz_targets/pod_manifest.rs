//! Static pod manifests (YAML or JSON from the manifest directory or an HTTP source): parsed and
//! validated, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pod) = nodelet::pod::manifest::parse(data) {
        let _ = nodelet::pod::manifest::validate(&pod);
    }
});
