//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`, as kubectl sends Secrets).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nodelet::apiserver::protobuf::decode(data);
});
