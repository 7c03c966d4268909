//! Layer tar streams (plain, gzip, zstd), unpacked into a throwaway directory: never a panic,
//! and never a file outside it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let layer = scratch.path().join("layer");
    let _ = nodelet::images::unpack::unpack(data, &layer);
    let outside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "layer")
        .collect();
    assert!(
        outside.is_empty(),
        "the layer wrote beside itself: {outside:?}"
    );
});
