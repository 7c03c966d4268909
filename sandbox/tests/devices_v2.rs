//! The cgroup v2 device program on the running kernel: loaded, attached to a throwaway cgroup,
//! and obeyed by a process in it. Runs as root where a cgroup2 hierarchy is mounted (the unified
//! root, or `/sys/fs/cgroup/unified` of a hybrid machine).

use std::path::{Path, PathBuf};
use std::process::Command;

use nodelet_sandbox::devices;

fn cgroup2_root() -> Option<PathBuf> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC))
}

#[test]
fn the_v2_program_allows_the_standard_devices_only() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("skipped: no cgroup2 hierarchy mounted");
        return;
    };
    let cgroup = root.join(format!("nodelet-devices-test-{}", std::process::id()));
    std::fs::create_dir(&cgroup).expect("create test cgroup");
    let result = std::panic::catch_unwind(|| check(&cgroup));
    let _ = std::fs::remove_dir(&cgroup);
    result.expect("device checks");
}

fn check(cgroup: &Path) {
    devices::apply_v2(cgroup, &devices::default_rules()).expect("load and attach");
    let nodes = tempfile_dir();
    let script = format!(
        "echo $$ > {procs} || exit 9
         mknod {n}/loop0 b 7 0 || exit 10
         mknod {n}/fuse c 10 229 || exit 11
         for d in {n}/loop0 {n}/fuse /dev/null /dev/zero /dev/urandom; do
           if err=$( (exec 3<\"$d\") 2>&1 ); then echo \"$d open\"; else echo \"$d: $err\"; fi
         done",
        procs = cgroup.join("cgroup.procs").display(),
        n = nodes.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    let _ = std::fs::remove_dir_all(&nodes);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for denied in ["loop0", "fuse"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("/{denied}:")))
            .unwrap_or_else(|| panic!("{denied} not refused: {text}"));
        assert!(line.contains("Operation not permitted"), "{line}");
    }
    for allowed in ["/dev/null", "/dev/zero", "/dev/urandom"] {
        assert!(text.contains(&format!("{allowed} open")), "{text}");
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nodelet-devnodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
