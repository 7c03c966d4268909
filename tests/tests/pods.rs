//! Real pods in test nodes: namespaces, filesystems, volumes, signals, restarts, status, limits,
//! agent restarts, bad input, and no leftovers.

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;
use nodelet_tests::{sleeper_pod, wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn state(pod: &Value, container: &str) -> Value {
    TestNode::container_status(pod, container)["state"].clone()
}

fn started_node() -> Result<TestNode> {
    let mut node = TestNode::new()?;
    node.start_agent()?;
    Ok(node)
}

#[test]
fn containers_share_hostname_localhost_and_ipc_but_not_filesystems() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: shared, emptyDir: {}}]
  containers:
  - name: server
    image: luksa/kubia
    imagePullPolicy: IfNotPresent
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: client
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo mine > /tmp/only-client; echo from-client > /shared/note; until wget -qO- http://127.0.0.1:8080/; do sleep 0.2; done; sleep 3600"]
    volumeMounts: [{name: shared, mountPath: /shared}]
"#,
    );
    let pod = node.wait_pod("web", "both containers running", T, |p| {
        TestNode::running(p, "server") && TestNode::running(p, "client")
    })?;
    nodelet_tests::wait_for("client log", T, || {
        node.logs("web", "client")
            .contains("You've hit web-node1")
            .then_some(())
    })?;

    let server = node.container_pid(&pod, "server")?;
    let client = node.container_pid(&pod, "client")?;
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for shared in ["net", "uts", "ipc"] {
        assert_eq!(
            ns(server, shared),
            ns(client, shared),
            "{shared} namespace is the pod's"
        );
    }
    for own in ["mnt", "pid"] {
        assert_ne!(
            ns(server, own),
            ns(client, own),
            "{own} namespace is the container's"
        );
    }
    let hostname = node.exec(&pod, "server", &["hostname"])?;
    assert_eq!(
        String::from_utf8_lossy(&hostname.stdout).trim(),
        "web-node1"
    );
    let own_file = node.exec(&pod, "server", &["cat", "/tmp/only-client"])?;
    assert!(
        !own_file.status.success(),
        "the server must not see the client's /tmp"
    );
    let shared = node.exec(&pod, "server", &["cat", "/shared/note"])?;
    assert_eq!(
        String::from_utf8_lossy(&shared.stdout).trim(),
        "from-client",
        "emptyDir is shared"
    );

    // The container environment: default caps, no_new_privs, masked and read-only paths.
    let status = std::fs::read_to_string(format!("/proc/{client}/status"))?;
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"));
    let ro = node.exec(
        &pod,
        "client",
        &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"],
    )?;
    assert!(!ro.status.success(), "/proc/sys is read-only");
    let masked = node.exec(&pod, "client", &["cat", "/proc/timer_list"])?;
    assert!(masked.stdout.is_empty(), "/proc/timer_list is masked");
    let hosts = node.exec(&pod, "client", &["cat", "/etc/hosts"])?;
    assert!(String::from_utf8_lossy(&hosts.stdout).starts_with("# Kubernetes-managed hosts file."));

    node.remove_manifest("web.yaml");
    node.wait_gone("web", T)?;
    node.assert_clean()
}

#[test]
fn sigterm_is_honoured_and_sigkill_follows_the_grace_period() -> Result<()> {
    let node = started_node()?;
    let marker = node.dir.join("host");
    node.write_manifest(
        "polite.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{{name: out, hostPath: {{path: {m}}}}}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: ["sh", "-c", "trap 'echo got TERM; echo got TERM > /out/term; exit 0' TERM; echo ready; while true; do sleep 0.1; done"]
"#,
            m = marker.display()
        ),
    );
    node.write_manifest(
        "stubborn.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
"#,
    );
    node.wait_pod("polite", "running", T, |p| TestNode::running(p, "c"))?;
    node.wait_pod("stubborn", "running", T, |p| TestNode::running(p, "c"))?;
    let start = Instant::now();
    node.remove_manifest("polite.yaml");
    // Its log says so while the pod is still being torn down, or the marker does afterwards.
    node.wait_gone("polite", T)?;
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "a container that exits on TERM does not wait out its 30 s grace"
    );
    assert_eq!(
        std::fs::read_to_string(marker.join("term"))?.trim(),
        "got TERM"
    );

    let start = Instant::now();
    node.remove_manifest("stubborn.yaml");
    node.wait_pod("stubborn", "terminating", T, |p| {
        p["metadata"]["deletionTimestamp"].is_string()
    })?;
    node.wait_gone("stubborn", T)?;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "SIGKILL comes only after the grace period"
    );
    assert!(node.agent_log().contains("grace period over; killing"));
    node.assert_clean()
}

#[test]
fn restart_policies_and_crash_loop_backoff() -> Result<()> {
    let node = started_node()?;
    let pod = |name: &str, policy: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"{script}\"]\n"
        )
    };
    node.write_manifest("never.yaml", &pod("never", "Never", "echo done"));
    node.write_manifest(
        "onfailure-ok.yaml",
        &pod("onfailure-ok", "OnFailure", "exit 0"),
    );
    node.write_manifest(
        "onfailure-bad.yaml",
        &pod("onfailure-bad", "OnFailure", "exit 3"),
    );
    node.write_manifest("always.yaml", &pod("always", "Always", "exit 0"));
    node.write_manifest("never-bad.yaml", &pod("never-bad", "Never", "exit 2"));

    let p = node.wait_pod("never", "Succeeded", T, |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    assert_eq!(state(&p, "c")["terminated"]["reason"], "Completed");
    assert_eq!(node.logs("never", "c").trim(), "done");
    node.wait_pod("onfailure-ok", "Succeeded", T, |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    let p = node.wait_pod("never-bad", "Failed", T, |p| {
        p["status"]["phase"] == "Failed"
    })?;
    assert_eq!(state(&p, "c")["terminated"]["exitCode"], 2);
    assert_eq!(state(&p, "c")["terminated"]["reason"], "Error");

    // Restarted at once, then held back 10 s: CrashLoopBackOff with kubelet's message.
    let p = node.wait_pod("onfailure-bad", "in back-off", T, |p| {
        TestNode::container_status(p, "c")["restartCount"] == 1
            && state(p, "c")["waiting"]["reason"] == "CrashLoopBackOff"
    })?;
    let message = state(&p, "c")["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with(
            "back-off 10s restarting failed container=c pod=onfailure-bad-node1_default("
        ),
        "{message}"
    );
    assert_eq!(
        TestNode::container_status(&p, "c")["lastState"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(p["status"]["phase"], "Running");
    node.wait_pod(
        "onfailure-bad",
        "second restart after the back-off",
        T,
        |p| TestNode::container_status(p, "c")["restartCount"] == 2,
    )?;
    node.wait_pod("always", "restarted although it succeeded", T, |p| {
        TestNode::container_status(p, "c")["restartCount"].as_i64() >= Some(1)
    })?;
    let table = String::from_utf8(node.nodelet(&["pods"]).stdout)?;
    assert!(table.starts_with("NAMESPACE   NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("never-node1") && l.contains("Completed")),
        "{table}"
    );

    for f in [
        "never",
        "onfailure-ok",
        "onfailure-bad",
        "always",
        "never-bad",
    ] {
        node.remove_manifest(&format!("{f}.yaml"));
    }
    for f in [
        "never",
        "onfailure-ok",
        "onfailure-bad",
        "always",
        "never-bad",
    ] {
        node.wait_gone(f, T)?;
    }
    node.assert_clean()
}

#[test]
fn agent_restart_readopts_pods_without_restarting_them() -> Result<()> {
    let mut node = started_node()?;
    node.write_manifest("steady.yaml", &sleeper_pod("steady"));
    node.write_manifest(
        "brief.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: brief}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'sleep 2; exit 7']}\n",
    );
    let before = node.wait_pod("steady", "running", T, |p| TestNode::running(p, "c"))?;
    node.wait_pod("brief", "running", T, |p| TestNode::running(p, "c"))?;
    let pid = node.container_pid(&before, "c")?;

    node.stop_agent(Signal::SIGKILL)?;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pods survive the agent"
    );
    std::thread::sleep(Duration::from_secs(3)); // `brief` exits while no agent runs
    node.start_agent()?;

    let after = node.wait_pod("steady", "re-adopted", T, |p| TestNode::running(p, "c"))?;
    assert_eq!(
        TestNode::container_status(&after, "c")["containerID"],
        TestNode::container_status(&before, "c")["containerID"]
    );
    assert_eq!(TestNode::container_status(&after, "c")["restartCount"], 0);
    assert_eq!(node.container_pid(&after, "c")?, pid);
    let brief = node.wait_pod("brief", "exit found", T, |p| {
        p["status"]["phase"] == "Failed"
    })?;
    assert_eq!(state(&brief, "c")["terminated"]["exitCode"], 7);

    // SIGTERM stops the agent and leaves the pods too.
    node.stop_agent(Signal::SIGTERM)?;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "SIGTERM to the agent leaves pods running"
    );
    node.start_agent()?;
    node.remove_manifest("steady.yaml");
    node.remove_manifest("brief.yaml");
    node.wait_gone("steady", T)?;
    node.wait_gone("brief", T)?;
    node.assert_clean()
}

#[test]
fn bad_manifests_are_reported_and_change_nothing_else() -> Result<()> {
    let node = started_node()?;
    let good = &sleeper_pod("good");
    node.write_manifest("good.yaml", good);
    let before = node.wait_pod("good", "running", T, |p| TestNode::running(p, "c"))?;
    node.write_manifest("typo.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, ports: [{containerPort: eighty}]}\n");
    node.write_manifest("noimage.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers:\n  - {name: c}\n");
    node.write_manifest("garbage.yaml", "{{{ not yaml");
    node.write_manifest(".hidden.yaml", "{{{ ignored");
    // An invalid edit of a running pod's file keeps the pod as it was.
    node.write_manifest("good.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  restartPolicy: Sometimes\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent}\n");
    nodelet_tests::wait_for("errors logged", T, || {
        let log = node.agent_log();
        (log.contains("typo.yaml")
            && log.contains("noimage.yaml")
            && log.contains("garbage.yaml")
            && log.contains("spec.restartPolicy"))
        .then_some(log)
    })
    .map(|log| {
        assert!(
            log.contains("spec.containers[0].ports[0].containerPort"),
            "field named: {log}"
        );
        assert!(
            log.contains("spec.containers[0].image: Required value"),
            "{log}"
        );
        assert!(!log.contains(".hidden.yaml"), "dot-files are ignored");
    })?;
    // An image the node does not have: the pod waits with a reason, nothing else changes.
    node.write_manifest("missing.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: nosuch/image:v1, imagePullPolicy: Never}\n");
    let missing = node.wait_pod("missing", "waiting on its image", T, |p| {
        state(p, "c")["waiting"]["reason"] == "ErrImageNeverPull"
    })?;
    assert!(state(&missing, "c")["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("is not present with pull policy of Never"));
    // A command that does not exist: RunContainerError, then back-off.
    node.write_manifest("nocmd.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: nocmd}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [no-such-binary]}\n");
    let nocmd = node.wait_pod("nocmd", "start error", T, |p| {
        let reason = &state(p, "c")["waiting"]["reason"];
        *reason == "RunContainerError" || *reason == "CrashLoopBackOff"
    })?;
    let last = &TestNode::container_status(&nocmd, "c")["lastState"]["terminated"];
    assert!(last.is_null() || last["reason"] == "StartError", "{last}");

    let pods = node.pods()?;
    assert_eq!(pods.len(), 3, "only good, missing and nocmd exist");
    let after = node.pod("good").unwrap();
    assert_eq!(
        TestNode::container_status(&after, "c")["containerID"],
        TestNode::container_status(&before, "c")["containerID"]
    );
    assert_eq!(after["spec"]["restartPolicy"], "Always");

    for f in ["good", "typo", "noimage", "garbage", "missing", "nocmd"] {
        node.remove_manifest(&format!("{f}.yaml"));
    }
    for f in ["good", "missing", "nocmd"] {
        node.wait_gone(f, T)?;
    }
    node.assert_clean()
}

#[test]
fn memory_limit_is_enforced_and_reported_as_oomkilled() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "hog.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hog}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'x=aaaaaaaa; while true; do x=$x$x; done']\n    resources: {limits: {memory: 16Mi, cpu: 500m}}\n",
    );
    let p = node.wait_pod("hog", "killed", T, |p| {
        state(p, "c")["terminated"].is_object()
    })?;
    assert_eq!(state(&p, "c")["terminated"]["reason"], "OOMKilled", "{p:#}");
    assert_eq!(state(&p, "c")["terminated"]["exitCode"], 137);
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    // The OOM killer's victim need not be the container's first process: here `tail` is
    // killed and `sh` exits 137 itself. Still OOMKilled, as containerd reports it.
    node.write_manifest(
        "piped.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: piped}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'head -c 200m /dev/zero | tail']\n    resources: {limits: {memory: 16Mi, cpu: 500m}}\n",
    );
    let p = node.wait_pod("piped", "killed", T, |p| {
        state(p, "c")["terminated"].is_object()
    })?;
    assert_eq!(state(&p, "c")["terminated"]["reason"], "OOMKilled", "{p:#}");
    assert_eq!(state(&p, "c")["terminated"]["exitCode"], 137);
    for pod in ["hog", "piped"] {
        node.remove_manifest(&format!("{pod}.yaml"));
        node.wait_gone(pod, T)?;
    }
    node.assert_clean()
}

#[test]
fn shared_process_namespace_and_run_as_user() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "share.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: share}\nspec:\n  shareProcessNamespace: true\n  terminationGracePeriodSeconds: 1\n  securityContext: {runAsUser: 1000, runAsGroup: 3000}\n  containers:\n  - {name: a, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}\n  - {name: b, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3601']}\n",
    );
    let p = node.wait_pod("share", "running", T, |p| {
        TestNode::running(p, "a") && TestNode::running(p, "b")
    })?;
    let ps = node.exec(&p, "b", &["ps"])?;
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.contains("sleep 3600") && ps.contains("sleep 3601"),
        "{ps}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.container_pid(&p, "a")?))?;
    assert!(
        status.contains("Uid:\t1000\t1000\t1000\t1000")
            && status.contains("Gid:\t3000\t3000\t3000\t3000"),
        "{status}"
    );
    assert!(
        status.contains("CapEff:\t0000000000000000"),
        "a non-root user keeps no effective caps"
    );
    node.remove_manifest("share.yaml");
    node.wait_gone("share", T)?;
    node.assert_clean()
}

#[test]
fn editing_a_manifest_replaces_the_pod() -> Result<()> {
    let node = started_node()?;
    let v = |msg: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: edit}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo {msg}; sleep 3600']}}\n")
    };
    node.write_manifest("edit.yaml", &v("one"));
    let first = node.wait_pod("edit", "running", T, |p| TestNode::running(p, "c"))?;
    node.write_manifest("edit.yaml", &v("two"));
    let second = node.wait_pod("edit", "replaced", T, |p| {
        p["metadata"]["uid"] != first["metadata"]["uid"] && TestNode::running(p, "c")
    })?;
    nodelet_tests::wait_for("new log", T, || {
        (node.logs("edit", "c").trim() == "two").then_some(())
    })?;
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);
    node.remove_manifest("edit.yaml");
    node.wait_gone("edit", T)?;
    node.assert_clean()
}

#[test]
fn a_changed_container_spec_restarts_only_that_container() -> Result<()> {
    let node = started_node()?;
    // With its own UID the pod stays the same pod across edits, as API-server pods do.
    let v = |msg: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fixed, uid: 0123456789abcdef0123456789abcdef}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: same, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n  - {{name: edited, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo {msg}; sleep 3600']}}\n"
        )
    };
    node.write_manifest("fixed.yaml", &v("one"));
    let first = node.wait_pod("fixed", "running", T, |p| {
        TestNode::running(p, "same") && TestNode::running(p, "edited")
    })?;
    node.write_manifest("fixed.yaml", &v("two"));
    let second = node.wait_pod("fixed", "edited container restarted", T, |p| {
        TestNode::container_status(p, "edited")["restartCount"] == 1
            && TestNode::running(p, "edited")
    })?;
    assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(
        TestNode::container_status(&second, "same")["containerID"],
        TestNode::container_status(&first, "same")["containerID"],
        "the unchanged container keeps running"
    );
    nodelet_tests::wait_for("new log", T, || {
        (node.logs("fixed", "edited").trim() == "two").then_some(())
    })?;
    node.remove_manifest("fixed.yaml");
    node.wait_gone("fixed", T)?;
    node.assert_clean()
}

#[test]
fn logs_follow_until_the_container_stops_and_previous_shows_the_last_instance() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "talk.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talk}\nspec:\n  restartPolicy: OnFailure\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'for i in 1 2 3; do echo line $i; sleep 0.1; echo err $i >&2; sleep 0.2; done; printf partial; exit 1']}\n",
    );
    node.wait_pod("talk", "running", T, |p| TestNode::running(p, "c"))?;
    let out = node.nodelet(&["logs", "talk-node1", "-f"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("line 1\nerr 1\nline 2\nerr 2\nline 3\nerr 3\npartial"),
        "{text:?}"
    );
    // The first instance failed (exit 1) and was restarted: --previous shows it.
    node.wait_pod("talk", "restarted", T, |p| {
        TestNode::container_status(p, "c")["restartCount"] == 1
    })?;
    let previous = node.nodelet(&["logs", "talk-node1", "--previous"]);
    assert!(String::from_utf8_lossy(&previous.stdout).starts_with("line 1\n"));
    let bad = node.nodelet(&["logs", "talk-node1", "-c", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("container nope is not valid for pod talk-node1"));
    node.remove_manifest("talk.yaml");
    node.wait_gone("talk", T)?;
    // Two containers and no -c: kubectl's default (the annotated one, else the first), said.
    node.write_manifest(
        "two.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\n  annotations: {kubectl.kubernetes.io/default-container: b}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: a, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo from a; sleep 3600']}\n  - {name: b, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo from b; sleep 3600']}\n",
    );
    node.wait_pod("two", "running", T, |p| TestNode::running(p, "b"))?;
    let out = wait_for("b's log line", T, || {
        let out = node.nodelet(&["logs", "two-node1"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("from b")
            .then_some(out)
    })?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("Defaulted container \"b\" out of: a, b"));
    node.remove_manifest("two.yaml");
    node.wait_gone("two", T)?;
    node.assert_clean()
}

#[test]
fn a_manifest_removed_while_the_agent_is_down_deletes_its_pod_at_start() -> Result<()> {
    let mut node = started_node()?;
    node.write_manifest("gone.yaml", &sleeper_pod("gone"));
    node.wait_pod("gone", "running", T, |p| TestNode::running(p, "c"))?;
    node.stop_agent(Signal::SIGKILL)?;
    node.remove_manifest("gone.yaml");
    node.start_agent()?;
    nodelet_tests::wait_for("pod deleted and cleaned", T, || node.assert_clean().ok())?;
    assert!(node.pod("gone").is_none());
    Ok(())
}

#[test]
fn container_logs_rotate_at_their_size_limit() -> Result<()> {
    let mut node = TestNode::with_config(
        "node1",
        "containerLogMaxSize: 2Ki\ncontainerLogMaxFiles: 3\n",
    )?;
    node.start_agent()?;
    node.write_manifest(
        "chatty.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: chatty}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'i=0; while [ $i -lt 300 ]; do echo \"line $i of a chatty container\"; i=$((i+1)); done']}\n",
    );
    let pod = node.wait_pod("chatty", "done", T, |p| {
        state(p, "c")["terminated"].is_object()
    })?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let dir = node
        .dir
        .join("logs")
        .join(format!("default_chatty-node1_{uid}"))
        .join("c");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "the live file and two rotated ones: {files:?}"
    );
    assert_eq!(files[0], "0.log");
    assert!(files[1].starts_with("0.log.") && files[2].starts_with("0.log."));
    for f in &files {
        assert!(
            std::fs::metadata(dir.join(f))?.len() <= 2048,
            "{f} is within the limit"
        );
    }
    let current = node.logs("chatty", "c");
    assert!(
        current.ends_with("line 299 of a chatty container\n"),
        "{current}"
    );
    assert!(
        !current.contains("line 0 of"),
        "only the live file is read, as kubelet does"
    );
    node.remove_manifest("chatty.yaml");
    node.wait_gone("chatty", T)?;
    node.assert_clean()
}

#[test]
fn bad_rotation_settings_stop_the_agent_with_the_key_named() -> Result<()> {
    let node = TestNode::with_config("node1", "containerLogMaxSize: lots\n")?;
    let out = node
        .command(nodelet_tests::nodelet_bin())
        .arg("--config")
        .arg(node.config())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("containerLogMaxSize: invalid quantity \"lots\""));
    Ok(())
}

/// `nodelet reset`: refused while the agent runs; with it stopped, every pod is stopped
/// gracefully (its stop signal first) and released, the bridge, allocations, cgroups and state
/// go, each said, and nothing is left.
#[test]
fn reset_stops_every_pod_and_removes_the_node_state() -> Result<()> {
    let mut node = TestNode::with_api()?;
    node.write_manifest(
        "polite.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: polite}\nspec:\n  terminationGracePeriodSeconds: 10\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'trap \"echo got TERM > /host/term; exit 0\" TERM; while true; do sleep 0.1; done'], volumeMounts: [{name: host, mountPath: /host}]}\n  volumes: [{name: host, hostPath: {path: HOST}}]\n"
            .replace("HOST", &node.dir.join("host").display().to_string())
            .as_str(),
    );
    node.kubectl_create(&sleeper_pod("api"), &[])?;
    node.wait_pod("polite", "running", T, |p| TestNode::running(p, "c"))?;
    wait_for("the API pod running", T, || {
        node.pods()
            .ok()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == "api" && TestNode::running(p, "c"))
    })?;
    let refused = node.nodelet(&["reset"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop nodelet first"));

    node.stop_agent(Signal::SIGTERM)?;
    let out = node.nodelet(&["reset"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "removed pod default/polite-node1",
        "removed pod default/api",
        "removed bridge cni0",
        "removed cgroups",
        "api.db",
    ] {
        assert!(said.contains(what), "{what} not said: {said}");
    }
    assert_eq!(
        std::fs::read_to_string(node.dir.join("host/term"))?.trim(),
        "got TERM",
        "the pod was not stopped gracefully"
    );
    let bridge = node.command("ip").args(["link", "show", "cni0"]).output()?;
    assert!(!bridge.status.success(), "the bridge is still there");
    node.assert_clean()
}

#[test]
fn the_downward_api_in_env_gives_the_pod_ip_and_resources() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "facts.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: facts, labels: {tier: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {limits: {memory: 64Mi, cpu: 500m}}
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: TIER, valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU_M, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
"#,
    );
    let pod = node.wait_pod("facts", "running", T, |p| TestNode::running(p, "c"))?;
    let pid = node.container_pid(&pod, "c")?;
    let env = std::fs::read(format!("/proc/{pid}/environ"))?;
    let env = String::from_utf8_lossy(&env).replace('\0', "\n");
    let ip = TestNode::pod_ip(&pod);
    assert!(!ip.is_empty());
    for want in [
        format!("POD_IP={ip}"),
        "TIER=web".into(),
        "MEM_MI=64".into(),
        "CPU_M=500".into(),
        "CPU=1".into(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in {env}");
    }
    node.remove_manifest("facts.yaml");
    node.wait_gone("facts", T)?;
    node.assert_clean()
}

#[test]
fn a_memory_empty_dir_is_a_tmpfs_of_its_size_limit_and_goes_with_the_pod() -> Result<()> {
    let node = started_node()?;
    node.write_manifest(
        "ram.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ram}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: cache, emptyDir: {medium: Memory, sizeLimit: 1Mi}}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    volumeMounts: [{name: cache, mountPath: /cache}]
"#,
    );
    let pod = node.wait_pod("ram", "running", T, |p| TestNode::running(p, "c"))?;
    let mounts = node.exec(&pod, "c", &["cat", "/proc/self/mounts"])?;
    let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /cache tmpfs") && l.contains("size=1024k")),
        "{mounts}"
    );
    let fits = node.exec(
        &pod,
        "c",
        &["dd", "if=/dev/zero", "of=/cache/a", "bs=1k", "count=512"],
    )?;
    assert!(fits.status.success(), "512 KiB fit");
    let full = node.exec(
        &pod,
        "c",
        &["dd", "if=/dev/zero", "of=/cache/b", "bs=1k", "count=1024"],
    )?;
    assert!(!full.status.success(), "more than the size limit does not");
    node.remove_manifest("ram.yaml");
    node.wait_gone("ram", T)?;
    node.assert_clean()
}
