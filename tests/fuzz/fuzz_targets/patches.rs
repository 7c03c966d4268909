//! PATCH bodies of each type (JSON merge, JSON patch, strategic merge) applied to a pod.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nodelet::apiserver::patch::{self, PatchType};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let kind = match kind % 3 {
        0 => PatchType::Merge,
        1 => PatchType::Json,
        _ => PatchType::Strategic,
    };
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"a": "1"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "env": [{"name": "X", "value": "1"}]}]},
    });
    let _ = patch::apply(kind, &pod, body);
});
