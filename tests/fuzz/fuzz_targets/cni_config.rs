//! CNI conflists and confs from the configuration directory: parsed and validated.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nodelet_cni_config::config::parse(std::path::Path::new("fuzz.conflist"), data);
});
