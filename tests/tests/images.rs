//! Images pulled from a real registry (Debian's docker-registry on a test node's loopback):
//! pull policies, one download for concurrent pulls, and the waiting reasons of failed pulls.

use std::time::Duration;

use anyhow::{ensure, Result};
use nodelet_tests::{Registry, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn waiting(pod: &Value) -> (String, String) {
    let w = &TestNode::container_status(pod, "c")["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_owned(),
        w["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn pod(name: &str, image: &str, policy: Option<&str>) -> String {
    let policy = policy
        .map(|p| format!(", imagePullPolicy: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}'{policy}, command: [sleep, '3600']}}\n"
    )
}

#[test]
fn pods_pull_their_images_from_a_registry() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start(&node, 5000)?;
    registry.push(&node, "busybox", "tools/box", "v1")?;
    node.start_agent()?;
    let image = format!("{}/tools/box:v1", registry.address);

    // Two pods at once, one image not on the node yet: one download.
    node.write_manifest("a.yaml", &pod("a", &image, None));
    node.write_manifest("b.yaml", &pod("b", &image, None));
    for name in ["a", "b"] {
        let p = node.wait_pod(name, "running from the pulled image", T, |p| {
            TestNode::container_status(p, "c")["state"]["running"].is_object()
        })?;
        let image_id = TestNode::container_status(&p, "c")["imageID"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            image_id.starts_with(&format!("{image}@sha256:")),
            "{image_id}"
        );
    }
    let log = node.agent_log();
    ensure!(
        log.matches("pulled in").count() == 1,
        "one pull for two pods:\n{log}"
    );
    let images = String::from_utf8(node.nodelet(&["images"]).stdout)?;
    ensure!(images.contains(&image), "{images}");

    // Missing from the registry: ErrImagePull naming the image, then ImagePullBackOff.
    let missing = format!("{}/tools/box:nope", registry.address);
    node.write_manifest("c.yaml", &pod("c", &missing, None));
    let failed = node.wait_pod("c", "pull failed", T, |p| waiting(p).0 == "ErrImagePull")?;
    ensure!(
        waiting(&failed)
            .1
            .contains(&format!("failed to pull image \"{missing}\"")),
        "{:?}",
        waiting(&failed)
    );
    node.wait_pod("c", "backing off", T, |p| {
        waiting(p).0 == "ImagePullBackOff"
    })?;

    // Never: only what the node has.
    node.write_manifest(
        "d.yaml",
        &pod(
            "d",
            &format!("{}/tools/other:v1", registry.address),
            Some("Never"),
        ),
    );
    node.wait_pod("d", "never pulled", T, |p| {
        waiting(p).0 == "ErrImageNeverPull"
    })?;

    for f in ["a", "b", "c", "d"] {
        node.remove_manifest(&format!("{f}.yaml"));
    }
    for f in ["a", "b", "c", "d"] {
        node.wait_gone(f, T)?;
    }
    drop(registry);
    node.assert_clean()
}
