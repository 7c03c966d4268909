//! Label and field selectors from `?labelSelector=` and `?fieldSelector=`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nodelet::apiserver::selector::{FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = LabelSelector::parse(text) {
        let labels = [("app".to_owned(), "web".to_owned())].into();
        let _ = s.matches(&labels);
    }
    let _ = FieldSelector::parse(text, &["spec.nodeName", "status.phase"]);
});
