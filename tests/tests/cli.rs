//! The operator commands on bad input: configuration errors that name the key, image imports that
//! fail cleanly and leave no half image behind.

use std::path::Path;
use std::process::{Command, Output};

use nodelet_tests::{nodelet_bin, test_images};

fn nodelet(root: &Path, args: &[&str]) -> Output {
    Command::new(nodelet_bin())
        .arg("--root-dir")
        .arg(root)
        .args(args)
        .output()
        .expect("run nodelet")
}

/// `nodelet images` with a configuration file: enough to load and check it.
fn images_with_config(config: &Path) -> Output {
    Command::new(nodelet_bin())
        .arg("--config")
        .arg(config)
        .arg("images")
        .output()
        .expect("run nodelet")
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nodelet-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn unknown_config_keys_and_bad_values_are_named() {
    let dir = temp("config");
    std::fs::write(dir.join("c.yaml"), "rootDir: /tmp/x\nstaticPodDir: /y\n").unwrap();
    let out = images_with_config(&dir.join("c.yaml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("c.yaml") && err.contains("unknown field `staticPodDir`"),
        "{err}"
    );

    std::fs::write(dir.join("c.yaml"), "fileCheckFrequency: often\n").unwrap();
    let out = images_with_config(&dir.join("c.yaml"));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("fileCheckFrequency: invalid duration \"often\""));

    let out = Command::new(nodelet_bin())
        .args(["--node-labels", "novalue", "images"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("label \"novalue\" is not key=value"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_import_checks_digests_and_never_leaves_half_an_image() {
    let dir = temp("import");
    let images = test_images();
    let root = dir.join("root");

    // A corrupted layer: the import fails naming the digest, and the image is not listed.
    let bad = dir.join("bad");
    copy_dir(&images.join("kubia"), &bad);
    let layer = std::fs::read_dir(bad.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut data = std::fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&layer, data).unwrap();
    let out = nodelet(&root, &["image", "import", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("has digest"), "{err}");
    let list = String::from_utf8_lossy(&nodelet(&root, &["images"]).stdout).into_owned();
    assert!(!list.contains("kubia"), "{list}");
    assert_eq!(
        std::fs::read_dir(root.join("images/tmp")).unwrap().count(),
        0,
        "work files removed"
    );

    // Not a layout, and a layout without a name.
    let out = nodelet(&root, &["image", "import", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("is not an OCI image layout: no oci-layout file"));
    let unnamed = dir.join("unnamed");
    copy_dir(&images.join("busybox"), &unnamed);
    let index = std::fs::read_to_string(unnamed.join("index.json")).unwrap();
    let index = index
        .replace("io.containerd.image.name", "x")
        .replace("org.opencontainers.image.ref.name\":\"latest", "y\":\"z");
    std::fs::write(unnamed.join("index.json"), index).unwrap();
    let out = nodelet(&root, &["image", "import", unnamed.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image reference given"));
    let out = nodelet(
        &root,
        &["image", "import", unnamed.to_str().unwrap(), "Bad/Name"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference \"Bad/Name\""));

    // The same layout imported under a name, and again as an archive: layers are shared.
    let out = nodelet(
        &root,
        &[
            "image",
            "import",
            unnamed.to_str().unwrap(),
            "example.com/tools/box:1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = dir.join("busybox.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(images.join("busybox"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let out = nodelet(&root, &["image", "import", archive.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported docker.io/library/busybox:latest")
    );
    let list = String::from_utf8_lossy(&nodelet(&root, &["images"]).stdout).into_owned();
    assert!(
        list.contains("example.com/tools/box:1")
            && list.contains("docker.io/library/busybox:latest"),
        "{list}"
    );
    assert_eq!(
        std::fs::read_dir(root.join("images/layers/sha256"))
            .unwrap()
            .count(),
        1,
        "one layer, stored once"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
