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

/// A registry that wants a password: refused without credentials (the reason says so), pulled
/// with them from a docker `config.json` on the node, read at pull time.
#[test]
fn credentials_from_a_docker_config_json() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start_with_auth(&node, 5001, "puller", "s3cret")?;
    registry.push(&node, "busybox", "private/box", "v1")?;
    node.start_agent()?;
    let image = format!("{}/private/box:v1", registry.address);
    node.write_manifest("a.yaml", &pod("a", &image, None));
    let refused = node.wait_pod("a", "pull refused", T, |p| waiting(p).0 == "ErrImagePull")?;
    let message = waiting(&refused).1.to_lowercase();
    ensure!(message.contains("not authorized"), "{message}");

    // A malformed credentials file is named in the reason, not taken as "no credentials".
    std::fs::write(node.dir.join("root/config.json"), "{not json")?;
    node.write_manifest("b.yaml", &pod("b", &image, None));
    let bad = node.wait_pod("b", "bad credentials file", T, |p| {
        waiting(p).1.contains("config.json")
    })?;
    ensure!(waiting(&bad).0 == "ErrImagePull", "{:?}", waiting(&bad));

    let auth = base64_of("puller:s3cret");
    std::fs::write(
        node.dir.join("root/config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.address
        ),
    )?;
    node.write_manifest("c.yaml", &pod("c", &image, None));
    node.wait_pod("c", "running from the private image", T, |p| {
        TestNode::container_status(p, "c")["state"]["running"].is_object()
    })?;
    Ok(())
}

fn base64_of(text: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run base64");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `nodelet image pull` by hand, with the same credentials and plain-HTTP rules as pods.
#[test]
fn image_pull_by_hand() -> Result<()> {
    let node = TestNode::with_config("node1", "")?;
    let registry = Registry::start_with_auth(&node, 5002, "hand", "pw")?;
    registry.push(&node, "kubia", "team/web", "v2")?;
    let image = format!("{}/team/web:v2", registry.address);
    let refused = node.nodelet(&["image", "pull", &image]);
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr)
                .to_lowercase()
                .contains("not authorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::fs::write(
        node.dir.join("root/config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"username": "hand", "password": "pw"}}}}}}"#,
            registry.address
        ),
    )?;
    let out = node.nodelet(&["image", "pull", &image]);
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .starts_with(&format!("pulled {image} (sha256:")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = String::from_utf8(node.nodelet(&["images"]).stdout)?;
    ensure!(images.contains(&image), "{images}");
    Ok(())
}

/// zstd-compressed layers (OCI `tar+zstd`), as `skopeo --dest-compress-format zstd` pushes them.
#[test]
fn zstd_layers_from_a_registry() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start(&node, 5003)?;
    registry.push_with(
        &node,
        "busybox",
        "zstd/box",
        "v1",
        &["--format", "oci", "--dest-compress-format", "zstd"],
    )?;
    let manifest = node
        .net_command("curl")
        .args([
            "-s",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/zstd/box/manifests/v1",
            registry.address
        ))
        .output()?;
    let manifest = String::from_utf8_lossy(&manifest.stdout).into_owned();
    ensure!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "not zstd: {manifest}"
    );
    node.start_agent()?;
    let image = format!("{}/zstd/box:v1", registry.address);
    node.write_manifest("z.yaml", &pod("z", &image, None));
    node.wait_pod("z", "running from zstd layers", T, |p| {
        TestNode::container_status(p, "c")["state"]["running"].is_object()
    })?;
    Ok(())
}
