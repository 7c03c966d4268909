//! CRI log records, as `kubectl logs` reads them back from a container's log file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = nodelet_sandbox::logs::parse_record(line);
    }
});
