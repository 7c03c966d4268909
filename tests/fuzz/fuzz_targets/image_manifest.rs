//! Image indexes, manifests and configurations from registries and layouts, and image
//! references from pod specs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

fuzz_target!(|data: &[u8]| {
    let _ = ImageIndex::from_reader(data);
    let _ = ImageManifest::from_reader(data);
    let _ = ImageConfiguration::from_reader(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nodelet::images::reference::Reference::parse(text);
    }
});
