//! Images pulled from a real registry (Debian's docker-registry on a test node's loopback):
//! pull policies, one download for concurrent pulls, and the waiting reasons of failed pulls.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{wait_for, Registry, TestNode};
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
            // containerd's form: the name without its tag, then the digest.
            image_id.starts_with(&format!("{}/tools/box@sha256:", registry.address)),
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
        waiting(&failed).1.contains(&format!(
            "failed to pull image \"{missing}\": {missing}: not found"
        )),
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
    let message = waiting(&refused).1;
    ensure!(
        message.contains("unauthorized: Not authorized"),
        "{message}"
    );

    // A malformed credentials file is named in the reason, not taken as "no credentials".
    std::fs::write(node.dir.join("root/config.json"), "{not json")?;
    node.write_manifest("b.yaml", &pod("b", &image, None));
    let bad = node.wait_pod("b", "bad credentials file", T, |p| {
        waiting(p).1.contains("config.json")
    })?;
    ensure!(waiting(&bad).0 == "ErrImagePull", "{:?}", waiting(&bad));

    let auth = base64_of("puller:s3cret");
    write_credentials(&node, &registry, &format!(r#"{{"auth": "{auth}"}}"#))?;
    node.write_manifest("c.yaml", &pod("c", &image, None));
    node.wait_pod("c", "running from the private image", T, |p| {
        TestNode::container_status(p, "c")["state"]["running"].is_object()
    })?;
    Ok(())
}

/// A registry behind a token service (Docker Hub's protocol): anonymous pulls are refused, the
/// node's credentials get a bearer token and the image.
#[test]
fn bearer_tokens_from_a_token_service() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start_with_token(&node, 5008, "bearer", "tok3n")?;
    registry.push(&node, "busybox", "hub/box", "v1")?;
    node.start_agent()?;
    let image = format!("{}/hub/box:v1", registry.address);
    node.write_manifest("a.yaml", &pod("a", &image, None));
    let refused = node.wait_pod("a", "pull refused", T, |p| waiting(p).0 == "ErrImagePull")?;
    ensure!(
        waiting(&refused).1.contains("unauthorized"),
        "{:?}",
        waiting(&refused)
    );
    let auth = base64_of("bearer:tok3n");
    write_credentials(&node, &registry, &format!(r#"{{"auth": "{auth}"}}"#))?;
    let before = registry.tokens_issued();
    node.write_manifest("b.yaml", &pod("b", &image, None));
    node.wait_pod("b", "running with a bearer token", T, |p| {
        TestNode::running(p, "c")
    })?;
    ensure!(
        registry.tokens_issued() > before,
        "the pull went without a token"
    );
    Ok(())
}

/// The node's `<rootDir>/config.json` with one registry's entry (`{"auth": ...}` or
/// `{"username": ..., "password": ...}`).
fn write_credentials(node: &TestNode, registry: &Registry, entry: &str) -> Result<()> {
    let auths = format!(r#"{{"auths": {{"{}": {entry}}}}}"#, registry.address);
    Ok(std::fs::write(node.dir.join("root/config.json"), auths)?)
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
    write_credentials(
        &node,
        &registry,
        r#"{"username": "hand", "password": "pw"}"#,
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

/// The layers of a test image layout, as (blob digest, diff id), base first.
fn layers_of(image: &str) -> Result<Vec<(String, String)>> {
    let layout = nodelet_tests::test_images().join(image);
    let blob = |digest: &str| -> Result<Value> {
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap_or_default())?;
    let config = blob(manifest["config"]["digest"].as_str().unwrap_or_default())?;
    let digests = manifest["layers"].as_array().cloned().unwrap_or_default();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(digests
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| {
            (
                l["digest"].as_str().unwrap_or_default().to_owned(),
                d.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

fn layer_stored(node: &TestNode, diff_id: &str) -> bool {
    node.dir
        .join("root/images/layers/sha256")
        .join(diff_id.trim_start_matches("sha256:"))
        .exists()
}

fn images_table(node: &TestNode) -> Result<String> {
    Ok(String::from_utf8(node.nodelet(&["images"]).stdout)?)
}

/// A registry behind TLS with a certificate from a test CA and basic auth: refused until the CA
/// is in the node's `certs.d`, then pulled with the node's credentials.
#[test]
fn a_tls_registry_trusted_through_certs_d() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start_tls_with_auth(&node, 5443, "tls", "pw")?;
    registry.push(&node, "busybox", "secure/box", "v1")?;
    write_credentials(&node, &registry, r#"{"username": "tls", "password": "pw"}"#)?;
    // An empty certs.d entry: TLS with the system's CAs only, which do not know the test CA.
    let certs = node.dir.join("certs.d").join(&registry.address);
    std::fs::create_dir_all(&certs)?;
    node.start_agent()?;
    let image = format!("{}/secure/box:v1", registry.address);
    node.write_manifest("a.yaml", &pod("a", &image, None));
    let refused = node.wait_pod("a", "an untrusted certificate", T, |p| {
        waiting(p).0 == "ErrImagePull"
    })?;
    let message = waiting(&refused).1;
    ensure!(message.contains("certificate"), "{message}");

    std::fs::copy(
        registry.ca.as_ref().expect("a TLS registry"),
        certs.join("ca.crt"),
    )?;
    node.write_manifest("b.yaml", &pod("b", &image, None));
    node.wait_pod("b", "running from the TLS registry", T, |p| {
        TestNode::container_status(p, "c")["state"]["running"].is_object()
    })?;
    Ok(())
}

/// Docker Hub names pulled through a mirror (the first one listed is down), and a manifest list
/// resolved to this node's platform although another platform is listed first.
#[test]
fn mirrors_and_multi_platform_indexes() -> Result<()> {
    let mut node = TestNode::with_config(
        "node1",
        "registryMirrors:\n  docker.io: ['127.0.0.1:5998', 'http://127.0.0.1:5004']\n",
    )?;
    let registry = Registry::start(&node, 5004)?;
    // As a docker manifest list of docker schema 2 manifests (the other tests push OCI).
    registry.push_with(
        &node,
        "multiarch",
        "library/multiarch",
        "v1",
        &["--format", "v2s2"],
    )?;
    node.start_agent()?;
    node.write_manifest(
        "m.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: m}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: 'multiarch:v1', command: [sh, -c, 'echo $PLATFORM; sleep 3600']}\n",
    );
    let running = node.wait_pod("m", "running from the mirror", T, |p| {
        TestNode::container_status(p, "c")["state"]["running"].is_object()
    })?;
    let image_id = TestNode::container_status(&running, "c")["imageID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        image_id.starts_with("docker.io/library/multiarch@sha256:"),
        "{image_id}"
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let logs = wait_for("the platform in the logs", T, || {
        let logs = node.logs("m", "c");
        logs.contains("linux/").then_some(logs)
    })?;
    ensure!(logs.trim() == format!("linux/{arch}"), "{logs}");
    let log = node.agent_log();
    ensure!(
        log.contains("pull from mirror failed") && log.contains("127.0.0.1:5998"),
        "the mirror that is down was tried first:\n{log}"
    );
    Ok(())
}

/// A registry that does not answer and a blob corrupted in the registry: each pull fails with a
/// reason that says so, and the store keeps nothing of the image.
#[test]
fn failed_pulls_say_why_and_store_nothing() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start(&node, 5005)?;
    registry.push(&node, "note", "t/note", "v1")?;
    let (blob, diff_id) = layers_of("note")?.pop().expect("note has layers");
    let file = registry.blob_file(&blob);
    let mut bytes = std::fs::read(&file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes)?;
    node.start_agent()?;

    node.write_manifest("down.yaml", &pod("down", "127.0.0.1:5999/t/note:v1", None));
    let down = node.wait_pod("down", "pull failed", T, |p| waiting(p).0 == "ErrImagePull")?;
    ensure!(
        waiting(&down).1.contains("registry unreachable"),
        "{:?}",
        waiting(&down)
    );

    let image = format!("{}/t/note:v1", registry.address);
    node.write_manifest("bad.yaml", &pod("bad", &image, None));
    let bad = node.wait_pod("bad", "pull failed", T, |p| waiting(p).0 == "ErrImagePull")?;
    ensure!(
        waiting(&bad).1.contains("digest mismatch"),
        "{:?}",
        waiting(&bad)
    );
    ensure!(!images_table(&node)?.contains(&image));
    ensure!(!layer_stored(&node, &diff_id), "the corrupt layer was kept");
    let leftovers: Vec<_> = std::fs::read_dir(node.dir.join("root/images/tmp"))?.collect();
    ensure!(leftovers.is_empty(), "left in tmp: {leftovers:?}");
    Ok(())
}

/// Past the high threshold, images no pod names are removed (a pull and a pod's departure set
/// collection off); the image in use and the layer it shares with a removed one stay.
#[test]
fn image_gc_removes_unused_images_and_spares_those_in_use() -> Result<()> {
    let mut node = TestNode::with_config(
        "node1",
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n",
    )?;
    let registry = Registry::start(&node, 5006)?;
    registry.push(&node, "note", "t/note", "v1")?;
    node.start_agent()?;
    node.write_manifest("keep.yaml", &pod("keep", "busybox", Some("IfNotPresent")));
    node.wait_pod("keep", "running", T, |p| TestNode::running(p, "c"))?;

    let image = format!("{}/t/note:v1", registry.address);
    node.write_manifest("n.yaml", &pod("n", &image, None));
    node.wait_pod("n", "running from the pulled image", T, |p| {
        TestNode::running(p, "c")
    })?;
    // The pull set collection off: kubia (unused) went, busybox and the new image stayed.
    let table = wait_for("kubia collected", T, || {
        let table = images_table(&node).ok()?;
        (!table.contains("luksa/kubia")).then_some(table)
    })?;
    ensure!(
        table.contains("docker.io/library/busybox:latest") && table.contains(&image),
        "{table}"
    );
    ensure!(table.contains("LAST USED"), "{table}");

    node.remove_manifest("n.yaml");
    node.wait_gone("n", T)?;
    wait_for("the pod's image collected", T, || {
        let table = images_table(&node).ok()?;
        (!table.contains(&image)).then_some(())
    })?;
    let layers = layers_of("note")?;
    ensure!(!layer_stored(&node, &layers[1].1), "the note layer stayed");
    ensure!(layer_stored(&node, &layers[0].1), "busybox's layer went");
    ensure!(
        TestNode::running(&node.pod("keep").context("pod keep")?, "c"),
        "the pod in use stopped"
    );
    node.remove_manifest("keep.yaml");
    node.wait_gone("keep", T)?;
    Ok(())
}

/// A pod's `imagePullSecrets`, made with `kubectl create secret docker-registry` in the built-in
/// API: its pull uses them; a pod without them is refused; a missing one is reported. (Pull policy
/// Always: with IfNotPresent, kubelet too runs an image already on the node without credentials.)
#[test]
fn image_pull_secrets_from_the_api() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start_with_auth(&node, 5007, "secret", "pw")?;
    registry.push(&node, "busybox", "private/box", "v1")?;
    node.start_agent()?;
    node.wait_api()?;
    // The Node's status lists the node's images, by digest and by tag (the scheduler's
    // ImageLocality reads them).
    let images = wait_for("the node's images in its status", T, || {
        let out = node
            .kubectl_ok(&["get", "node", "node1", "-o", "jsonpath={.status.images}"])
            .ok()?;
        out.contains("docker.io/library/busybox:latest")
            .then_some(out)
    })?;
    ensure!(
        images.contains("docker.io/library/busybox@sha256:") && images.contains("sizeBytes"),
        "{images}"
    );
    node.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", registry.address),
        "--docker-username=secret",
        "--docker-password=pw",
    ])?;
    let listed = node.kubectl_ok(&["get", "secrets"])?;
    ensure!(
        listed.contains("regcred") && listed.contains("kubernetes.io/dockerconfigjson"),
        "{listed}"
    );
    let image = format!("{}/private/box:v1", registry.address);
    let pod = |name: &str, secret: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  imagePullSecrets: [{{name: {secret}}}]\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: Always, command: [sleep, '3600']}}\n"
        )
    };
    node.kubectl_create(&pod("with", "regcred"), &[])?;
    node.kubectl_create(&pod("without", "nosuch"), &[])?;
    let state = |name: &str| -> Option<Value> {
        let out = node.kubectl_ok(&["get", "pod", name, "-o", "json"]).ok()?;
        let pod: Value = serde_json::from_str(&out).ok()?;
        Some(pod["status"]["containerStatuses"][0]["state"].clone())
    };
    wait_for("the pod with the secret running", T, || {
        state("with").filter(|s| s["running"].is_object())
    })
    .with_context(|| node.agent_log())?;
    let refused = wait_for("the pod without it refused", T, || {
        state("without").filter(|s| s["waiting"]["reason"] == "ErrImagePull")
    })
    .with_context(|| {
        format!(
            "{}\n{}",
            node.kubectl_ok(&["describe", "pod", "without"])
                .unwrap_or_default(),
            node.agent_log()
        )
    })?;
    ensure!(
        refused["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unauthorized"),
        "{refused}"
    );
    let described = node.kubectl_ok(&["describe", "pod", "without"])?;
    ensure!(
        described.contains("FailedToRetrieveImagePullSecret"),
        "{described}"
    );
    node.kubectl_ok(&["delete", "pod", "--all", "--grace-period=1"])?;
    Ok(())
}

/// A pull killed in the middle of a layer leaves no image that looks complete; what it left in
/// the store's `tmp/` is swept when the agent starts, and pulling again succeeds.
#[test]
fn an_interrupted_pull_restarts_cleanly() -> Result<()> {
    use std::io::BufRead;
    let mut node = TestNode::with_config("node1", "")?;
    let layout = node.dir.join("big");
    let built = std::process::Command::new("bash")
        .arg(nodelet_tests::workspace().join("tests/images/big.sh"))
        .arg(&layout)
        .args(["2", "24"])
        .output()?;
    ensure!(
        built.status.success(),
        "big.sh: {}",
        nodelet_tests::describe_output(&built)
    );
    let registry = Registry::start(&node, 5009)?;
    registry.push_layout(&node, &layout, "big/image", "v1", &[])?;
    let image = format!("{}/big/image:v1", registry.address);

    // nsenter -n execs the pull in place: its pid is the pull's.
    let mut pull = node
        .net_command(nodelet_tests::nodelet_bin())
        .arg("--config")
        .arg(node.config())
        .args(["image", "pull", &image])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = pull.stderr.take().context("pull stderr")?;
    let mut seen = String::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line?;
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("pulling layer (") {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pull.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            break;
        }
    }
    let status = pull.wait()?;
    ensure!(
        !status.success(),
        "the pull finished before it was killed:\n{seen}"
    );
    ensure!(
        !images_table(&node)?.contains(&image),
        "a half pull is listed"
    );
    let tmp = node.dir.join("root/images/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(!left.is_empty(), "the killed pull left nothing to sweep");
    // As if the crash were a while ago: the sweep spares entries younger than 10 s.
    for path in &left {
        let out = std::process::Command::new("touch")
            .args(["-d", "1 minute ago"])
            .arg(path)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            nodelet_tests::describe_output(&out)
        );
    }
    node.start_agent()?;
    wait_for("the leftovers swept", T, || {
        std::fs::read_dir(&tmp).ok()?.next().is_none().then_some(())
    })?;
    let again = node.nodelet(&["image", "pull", &image]);
    ensure!(
        again.status.success(),
        "{}",
        nodelet_tests::describe_output(&again)
    );
    ensure!(images_table(&node)?.contains(&image));
    Ok(())
}

/// A layer that aims a whiteout through a symlink at a host directory: refused with the entry
/// named, by `image import` and by a registry pull alike, and nothing is written outside.
#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() -> Result<()> {
    // The host directory the layer aims at (its symlink's target), as the attacker hopes.
    let target = std::path::Path::new("/tmp/nodelet-hostile-target");
    std::fs::create_dir_all(target)?;
    let planted = target.join("pwned");
    let _ = std::fs::remove_file(&planted);
    let mut node = TestNode::with_config("node1", "")?;
    let import = node.nodelet(&[
        "image",
        "import",
        nodelet_tests::test_images()
            .join("hostile")
            .to_str()
            .unwrap_or_default(),
    ]);
    let stderr = String::from_utf8_lossy(&import.stderr).into_owned();
    ensure!(!import.status.success(), "hostile image imported: {stderr}");
    ensure!(
        stderr.contains("entry ./evil/.wh.pwned goes through a symlink")
            || stderr.contains("entry evil/.wh.pwned goes through a symlink"),
        "{stderr}"
    );
    ensure!(!planted.exists(), "import planted {}", planted.display());

    let registry = Registry::start(&node, 5007)?;
    registry.push(&node, "hostile", "evil/image", "v1")?;
    node.start_agent()?;
    let image = format!("{}/evil/image:v1", registry.address);
    node.write_manifest("h.yaml", &pod("h", &image, None));
    let pod = node.wait_pod("h", "refused", T, |p| {
        waiting(p).1.contains("goes through a symlink")
    })?;
    ensure!(
        waiting(&pod).0 == "ErrImagePull" || waiting(&pod).0 == "ImagePullBackOff",
        "{pod:#}"
    );
    ensure!(!planted.exists(), "pull planted {}", planted.display());
    let _ = std::fs::remove_dir(target);
    node.remove_manifest("h.yaml");
    node.wait_gone("h", T)?;
    Ok(())
}
