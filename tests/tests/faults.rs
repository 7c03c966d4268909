//! Faults: the agent SIGKILLed in the middle of its work, shims killed or frozen, hostile
//! input. Each checks that no pod is lost, no container restarted that nothing asked to restart,
//! no pod runs twice, and nothing leaks.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nodelet_tests::{wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

/// `n` one-container sleeping pods named `<prefix>-<i>`, as one YAML stream.
fn pods_yaml(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}-{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The node's pods by name, as the agent reports them.
fn by_name(node: &TestNode) -> BTreeMap<String, Value> {
    node.pods()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap_or("").to_owned(), p))
        .collect()
}

/// A pod's only container as (containerID, startedAt, restartCount).
type Running = (Value, Value, Value);

/// Each pod's only container, once all `names` run.
fn wait_running(node: &TestNode, names: &[String]) -> Result<BTreeMap<String, Running>> {
    wait_for(&format!("{} pods running", names.len()), T, || {
        let pods = by_name(node);
        names
            .iter()
            .map(|n| {
                let p = pods.get(n)?;
                TestNode::running(p, "c").then_some(())?;
                let c = TestNode::container_status(p, "c");
                let started = c["state"]["running"]["startedAt"].clone();
                Some((
                    n.clone(),
                    (c["containerID"].clone(), started, c["restartCount"].clone()),
                ))
            })
            .collect::<Option<BTreeMap<_, _>>>()
    })
    .with_context(|| format!("agent log:\n{}", node.agent_log()))
}

/// Host pids of the node's shims (not its reaper).
fn shims(node: &TestNode) -> Vec<i32> {
    node.processes()
        .into_iter()
        .filter(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"nodelet-shim"))
                && args.get(1).is_some_and(|a| *a != b"reaper")
        })
        .collect()
}

/// The host pid of one pod's shim (its `shim.pid` holds the pid in the node's namespace).
fn shim_of(node: &TestNode, uid: &str) -> Result<i32> {
    shims(node)
        .into_iter()
        .find(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(uid)
        })
        .with_context(|| format!("no shim for pod {uid}"))
}

/// One sleeping API pod `<prefix>-0`, once running: its name, its only container as
/// `wait_running` reports it, the pod and its UID.
fn one_pod(node: &TestNode, prefix: &str) -> Result<(String, Running, Value, String)> {
    node.kubectl_create(&pods_yaml(prefix, 1), &[])?;
    let name = format!("{prefix}-0");
    let mut running = wait_running(node, std::slice::from_ref(&name))?;
    let container = running.remove(&name).context("running pod")?;
    let pod = by_name(node).remove(&name).context("pod")?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((name, container, pod, uid))
}

/// A test node with its agent and built-in API up.
/// A node with the built-in API whose pods resync every 10 s (kubelet's default is a minute):
/// the faults below are met by the periodic syncs of every worker, not only by events.
fn api_node() -> Result<TestNode> {
    let mut node = TestNode::with_config("node1", "syncFrequency: 10s\n")?;
    node.start_agent()?;
    node.wait_api()?;
    Ok(node)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn delete_all_and_check_clean(node: &TestNode) -> Result<()> {
    node.kubectl_ok(&["delete", "pods", "--all", "--wait=false"])?;
    wait_for("every pod deleted", T, || {
        by_name(node).is_empty().then_some(())
    })?;
    wait_for("every shim gone", T, || {
        shims(node).is_empty().then_some(())
    })?;
    node.assert_clean()
}

/// Pods that run through the restart tests: 20 in `make test`, `FAULT_PODS` (100 in `make
/// faults`) for the long version.
fn steady_pods() -> usize {
    std::env::var("FAULT_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

/// kubelet waits until every source has listed its pods before it kills anything. A restarted
/// agent re-adopts every API pod as it runs: same container, same start, no restart, no second
/// sandbox; also when it was killed while pods were still being created.
#[test]
fn agent_sigkill_and_restart_keeps_every_api_pod() -> Result<()> {
    let mut node = api_node()?;
    let n = steady_pods();
    let steady = names("steady", n);
    node.kubectl_create(&pods_yaml("steady", n), &[])?;
    let before = wait_running(&node, &steady)?;

    for round in 0..3 {
        node.stop_agent(Signal::SIGKILL)?;
        node.start_agent()?;
        node.wait_api()?;
        // Kill it again while it is busy creating pods, at a different point each round.
        let batch = format!("new{round}");
        node.kubectl_create(&pods_yaml(&batch, 5), &[])?;
        std::thread::sleep(Duration::from_millis(150 * round as u64));
        node.stop_agent(Signal::SIGKILL)?;
        node.start_agent()?;
        let after = wait_running(&node, &steady)?;
        ensure!(
            after == before,
            "round {round}: re-adopted pods changed:\nbefore {before:?}\nafter {after:?}"
        );
        let all: Vec<String> = (0..=round)
            .flat_map(|r| names(&format!("new{r}"), 5))
            .chain(steady.iter().cloned())
            .collect();
        let running = wait_running(&node, &all)?;
        ensure!(
            running.values().all(|(_, _, restarts)| restarts == 0),
            "round {round}: a container restarted: {running:?}"
        );
        // Stable: one shim per pod, after a few resyncs too.
        std::thread::sleep(Duration::from_secs(3));
        ensure!(
            shims(&node).len() == all.len(),
            "round {round}: {} shims for {} pods",
            shims(&node).len(),
            all.len()
        );
        ensure!(
            wait_running(&node, &all)? == running,
            "round {round}: pods changed"
        );
    }
    delete_all_and_check_clean(&node)
}

/// A shim that is SIGKILLed takes its sandbox with it: the pod gets a new one, each container
/// starts again counted as a restart with the lost instance as `lastState`, and kubelet's
/// `SandboxChanged` event is recorded. Nothing of the old sandbox survives.
#[test]
fn a_killed_shim_counts_as_a_restart_of_each_container() -> Result<()> {
    let mut node = api_node()?;
    let (pod, before, p, uid) = one_pod(&node, "victim")?;
    let old_pid = node.container_pid(&p, "c")?;
    kill(Pid::from_raw(shim_of(&node, &uid)?), Signal::SIGKILL)?;

    let restarted = wait_for("the container restarted in a new sandbox", T, || {
        let p = by_name(&node).remove(&pod)?;
        let c = TestNode::container_status(&p, "c");
        (TestNode::running(&p, "c") && c["restartCount"] == 1).then_some(p)
    })
    .with_context(|| node.agent_log())?;
    let c = TestNode::container_status(&restarted, "c");
    ensure!(c["containerID"] != before.0, "{c:#}");
    let last = &c["lastState"]["terminated"];
    ensure!(
        last["exitCode"] == 137 && last["containerID"] == before.0,
        "lastState: {c:#}"
    );
    ensure!(
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists(),
        "the old container survived its sandbox"
    );
    wait_for("the SandboxChanged event", T, || {
        let events = node
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=victim-0",
            ])
            .ok()?;
        events.contains("SandboxChanged").then_some(())
    })?;
    ensure!(shims(&node).len() == 1, "one shim for the pod");
    // The restart is remembered by a restarted agent too.
    node.stop_agent(Signal::SIGKILL)?;
    node.start_agent()?;
    std::thread::sleep(Duration::from_secs(2));
    let again = by_name(&node).remove(&pod).context("pod after restart")?;
    let c2 = TestNode::container_status(&again, "c");
    ensure!(
        c2["restartCount"] == 1 && c2["containerID"] == c["containerID"],
        "{c2:#}"
    );
    delete_all_and_check_clean(&node)
}

/// A shim that does not answer (frozen longer than a call may take) is not a lost sandbox: the
/// agent asks again, and the pod is left as it runs.
#[test]
fn a_shim_that_does_not_answer_is_not_torn_down() -> Result<()> {
    let node = api_node()?;
    let (pod, before, _, uid) = one_pod(&node, "frozen")?;
    let shim_pid = shim_of(&node, &uid)?;
    kill(Pid::from_raw(shim_pid), Signal::SIGSTOP)?;
    // Past a resync (10 to 15 s) and the 30 s call timeout.
    std::thread::sleep(Duration::from_secs(50));
    kill(Pid::from_raw(shim_pid), Signal::SIGCONT)?;
    let after = wait_running(&node, std::slice::from_ref(&pod))?;
    ensure!(after[&pod] == before, "before {before:?}, after {after:?}");
    ensure!(
        node.agent_log().contains("shim did not answer"),
        "{}",
        node.agent_log()
    );
    ensure!(
        !node.agent_log().contains("shim gone"),
        "{}",
        node.agent_log()
    );
    delete_all_and_check_clean(&node)
}

/// What may hold Secrets (the API's store, pod records, container environments) is readable by
/// root only, as etcd and kubelet keep theirs.
#[test]
fn state_holding_secrets_is_private() -> Result<()> {
    let node = api_node()?;
    let (_, _, p, uid) = one_pod(&node, "private")?;
    let id = TestNode::container_status(&p, "c")["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("nodelet://"))
        .unwrap_or_default()
        .to_owned();
    let mode = |path: std::path::PathBuf| -> Result<u32> {
        Ok(std::fs::metadata(&path)
            .with_context(|| path.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    ensure!(mode(node.dir.join("root"))? == 0o700);
    ensure!(mode(node.dir.join("run"))? == 0o700);
    ensure!(mode(node.dir.join("root/api.db"))? == 0o600);
    let pod_dir = node.dir.join("root/pods").join(uid);
    ensure!(mode(pod_dir.join("pod.json"))? == 0o600);
    ensure!(mode(pod_dir.join("containers").join(&id).join("process.json"))? == 0o600);
    // And `nobody` cannot read them.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(node.dir.join("root/api.db"))
        .output()?;
    ensure!(!out.status.success(), "nobody read api.db");
    delete_all_and_check_clean(&node)
}

/// kubelet's `podPidsLimit` on the pod's cgroup: a fork bomb stops at the limit, and the node
/// and the agent go on.
#[test]
fn a_fork_bomb_stops_at_the_pod_pids_limit() -> Result<()> {
    let mut node = TestNode::with_config("node1", "podPidsLimit: 50\n")?;
    node.start_agent()?;
    node.wait_api()?;
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bomb}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'for i in $(seq 200); do sleep 3600 & done; wait']\n",
        &[],
    )?;
    let pod = wait_for("the bomb pod running", T, || {
        by_name(&node)
            .remove("bomb")
            .filter(|p| TestNode::running(p, "c"))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let cgroups: Vec<std::path::PathBuf> = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|root| {
            std::path::Path::new(root)
                .join(node.cgroup_root.trim_start_matches('/'))
                .join("kubepods/besteffort")
                .join(format!("pod{uid}"))
        })
        .filter(|p| p.join("pids.max").exists())
        .collect();
    let cgroup = cgroups.first().context("the pod's pids cgroup")?;
    ensure!(std::fs::read_to_string(cgroup.join("pids.max"))?.trim() == "50");
    let current: u64 = std::fs::read_to_string(cgroup.join("pids.current"))?
        .trim()
        .parse()?;
    ensure!(current <= 50, "{current} processes in the pod");
    // The rest of the node is fine.
    node.kubectl_create(&pods_yaml("fine", 1), &[])?;
    wait_running(&node, &names("fine", 1))?;
    delete_all_and_check_clean(&node)
}

/// Opens each device node in a container and says what happened: `NAME open` or the error.
const DEVICE_CHECKS: &str = r#"
mknod /tmp/loop0 b 7 0 && echo "mknod ok"
mknod /tmp/fuse c 10 229; mknod /tmp/tty0 c 4 0; mknod /tmp/loopctl c 10 237
for d in /tmp/loop0 /tmp/fuse /tmp/tty0 /tmp/loopctl /dev/null /dev/zero /dev/urandom /dev/full; do
  if err=$( (exec 3<"$d") 2>&1 ); then echo "$d open"; else echo "$d: $err"; fi
done
"#;

fn check_devices(output: &str) -> Result<()> {
    ensure!(
        output.contains("mknod ok"),
        "CAP_MKNOD may make nodes: {output}"
    );
    for denied in ["/tmp/loop0", "/tmp/fuse", "/tmp/tty0", "/tmp/loopctl"] {
        let line = output
            .lines()
            .find(|l| l.starts_with(denied))
            .with_context(|| format!("{denied} not tried: {output}"))?;
        ensure!(
            line.contains("Operation not permitted"),
            "{denied} must be refused by the devices cgroup: {line}"
        );
    }
    for allowed in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/full"] {
        ensure!(
            output.contains(&format!("{allowed} open")),
            "{allowed} must open: {output}"
        );
    }
    Ok(())
}

/// runc's device rules: a container may mknod (CAP_MKNOD is in the default set) but open only
/// the standard nodes; an exec'd process is held to the same rules.
#[test]
fn containers_and_execs_open_only_the_standard_devices() -> Result<()> {
    let node = api_node()?;
    let script: String = DEVICE_CHECKS
        .lines()
        .chain(["sleep 3600"])
        .map(|l| format!("      {l}\n"))
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: devices}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command:\n    - sh\n    - -c\n    - |\n{script}"
    );
    node.kubectl_create(&yaml, &[])?;
    let logs = wait_for("the device checks", T, || {
        node.kubectl_ok(&["logs", "devices"])
            .ok()
            .filter(|l| l.contains("/dev/full"))
    })
    .with_context(|| node.agent_log())?;
    check_devices(&logs)?;
    let again = DEVICE_CHECKS.replace("/tmp/", "/tmp/x");
    let exec = node.kubectl_ok(&["exec", "devices", "--", "sh", "-c", &again])?;
    check_devices(&exec.replace("/tmp/x", "/tmp/"))?;
    delete_all_and_check_clean(&node)
}

/// Runs a command inside the node and requires success.
fn in_node(node: &TestNode, program: &str, args: &[&str]) -> Result<String> {
    let out = node.command(program).args(args).output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's Lease renewTime, as the API has it.
fn lease_renewed(node: &TestNode) -> Option<String> {
    let out = node
        .kubectl_ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            &node.name,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .ok()?;
    (!out.is_empty()).then_some(out)
}

/// A full disk makes the API's writes fail with a clear answer (507) while it lasts; once
/// space is freed, writes (pods, the Lease, node status) go on by themselves, with nothing lost.
#[test]
fn writes_fail_while_the_disk_is_full_and_resume_when_it_is_not() -> Result<()> {
    let mut node = TestNode::new()?;
    // The node's root directory on a small file system of its own (inside the node's mount
    // namespace), holding what the node had.
    let root = node.dir.join("root");
    let copy = node.dir.join("root.orig");
    std::fs::rename(&root, &copy)?;
    std::fs::create_dir(&root)?;
    let root_s = root.to_str().unwrap_or_default().to_owned();
    in_node(
        &node,
        "mount",
        &["-t", "tmpfs", "-o", "size=48m", "tmpfs", &root_s],
    )?;
    in_node(
        &node,
        "cp",
        &["-a", &format!("{}/.", copy.display()), &root_s],
    )?;
    node.start_agent()?;
    node.wait_api()?;
    node.kubectl_create(&pods_yaml("before", 1), &[])?;
    wait_running(&node, &names("before", 1))?;

    let filler = format!("{root_s}/filler");
    // dd stops at ENOSPC and says so; the file system is then full.
    let _ = node
        .command("dd")
        .args(["if=/dev/zero", &format!("of={filler}"), "bs=1M"])
        .output()?;
    // redb may still have room in its file: write until a write needs more (bounded).
    let big = "x".repeat(100_000);
    let mut failed = None;
    for i in 0..100 {
        let yaml = pods_yaml(&format!("during{i}"), 1).replace(
            "metadata: {",
            &format!("metadata: {{annotations: {{big: {big}}}, "),
        );
        let out = node.kubectl_with("kubectl", &["create", "-f", "-"], Some(&yaml));
        if !out.status.success() {
            failed = Some(out);
            break;
        }
    }
    let out = failed.context("every write succeeded on a full disk")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("storage") || stderr.contains("507"),
        "unclear error: {stderr}"
    );
    // The agent keeps running, and so does the pod.
    ensure!(node.kubectl_ok(&["get", "pods"])?.contains("before-0"));

    in_node(&node, "rm", &["-f", &filler])?;
    wait_for("writes to work again", T, || {
        node.kubectl_create(&pods_yaml("after", 1), &[]).ok()
    })
    .with_context(|| node.agent_log())?;
    wait_running(&node, &names("after", 1))?;
    let renewed = lease_renewed(&node).context("lease")?;
    wait_for("the Lease renewed after the disk was full", T, || {
        lease_renewed(&node).filter(|r| *r != renewed)
    })?;
    ensure!(node.kubectl_ok(&["get", "pods"])?.contains("before-0"));
    delete_all_and_check_clean_keeping(&node, &[&root_s])
}

/// Like `delete_all_and_check_clean`, after unmounting what the test mounted in the node.
fn delete_all_and_check_clean_keeping(node: &TestNode, mounts: &[&str]) -> Result<()> {
    node.kubectl_ok(&["delete", "pods", "--all", "--wait=false"])?;
    wait_for("every pod deleted", T, || {
        by_name(node).is_empty().then_some(())
    })?;
    wait_for("every shim gone", T, || {
        shims(node).is_empty().then_some(())
    })?;
    for m in mounts {
        in_node(node, "umount", &["-l", m])?;
    }
    node.assert_clean()
}

/// A damaged `api.db` (garbage over its middle, or emptied) is refused with the file named and
/// what to do; the agent goes on with its static pods and the kubelet API, and leaves the API's
/// pods running as they are.
#[test]
fn a_damaged_store_is_refused_and_the_node_goes_on() -> Result<()> {
    let mut node = api_node()?;
    node.write_manifest("static.yaml", &nodelet_tests::sleeper_pod("static"));
    node.kubectl_create(&pods_yaml("api", 1), &[])?;
    let before = wait_running(
        &node,
        &["api-0".to_owned(), format!("static-{}", node.name)],
    )?;
    let db = node.dir.join("root/api.db");
    for damage in ["garbage", "empty"] {
        node.stop_agent(Signal::SIGKILL)?;
        let mut data = std::fs::read(&db)?;
        match damage {
            "garbage" => {
                let len = data.len();
                for b in &mut data[len / 4..len / 2] {
                    *b = 0xa5;
                }
                data[0..8].copy_from_slice(b"garbage!");
            }
            _ => data.clear(),
        }
        std::fs::write(&db, &data)?;
        node.start_agent()?;
        let refused = wait_for("the store refused", T, || {
            let log = node.agent_log();
            log.contains("the built-in API is not served")
                .then_some(log)
        })?;
        ensure!(refused.contains(&db.display().to_string()), "{refused}");
        ensure!(
            refused.contains("restore a backup"),
            "{damage}: no advice: {refused}"
        );
        std::thread::sleep(Duration::from_secs(3));
        let running = wait_running(
            &node,
            &["api-0".to_owned(), format!("static-{}", node.name)],
        )?;
        ensure!(running == before, "{damage}: pods changed: {running:?}");
        ensure!(
            std::fs::read(&db)? == data,
            "{damage}: the store file was changed"
        );
        // The kubelet API answers.
        let healthz = node
            .api_curl(true)?
            .args(["-k", "https://127.0.0.1:10250/healthz"])
            .output()?;
        ensure!(
            String::from_utf8_lossy(&healthz.stdout) == "ok",
            "{damage}: kubelet API"
        );
        // Start over with an empty store, as the message says: the API pod is then gone.
        std::fs::File::create(node.dir.join("agent.log"))?;
    }
    // Without the API's list, the manifest directory's own removals still apply.
    node.remove_manifest("static.yaml");
    let static_name = format!("static-{}", node.name);
    wait_for("the static pod gone without the API", T, || {
        (!by_name(&node).contains_key(&static_name)).then_some(())
    })?;
    ensure!(
        by_name(&node).contains_key("api-0"),
        "the API's pod was touched"
    );
    node.stop_agent(Signal::SIGTERM)?;
    std::fs::remove_file(&db)?;
    node.start_agent()?;
    node.wait_api()?;
    wait_for("every pod gone", T, || {
        by_name(&node).is_empty().then_some(())
    })?;
    wait_for("every shim gone", T, || {
        shims(&node).is_empty().then_some(())
    })?;
    node.assert_clean()
}

/// Runs `work` on a thread of its own inside the node's network namespace (sockets it opens
/// stay there); the thread ends with the work.
fn in_node_netns<T: Send + 'static>(
    node: &TestNode,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", node.reaper))?;
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in the node's namespace panicked"))
}

/// How many of the connections the server has not closed.
fn still_open(conns: &mut [std::net::TcpStream]) -> usize {
    conns
        .iter_mut()
        .map(|c| {
            c.set_nonblocking(true).expect("nonblocking");
            is_open(c)
        })
        .filter(|open| *open)
        .count()
}

/// Whether the server still holds the connection: a read would block rather than see its end.
fn is_open(c: &mut impl std::io::Read) -> bool {
    let mut b = [0u8; 1];
    matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Thousands of idle connections to the kubelet API, and connections that send their headers a
/// byte at a time, wedge nothing: each listener holds at most 1,024 from one address, closes
/// those that never finish a TLS handshake (10 s) or their headers (30 s), and the node, its
/// pods and its other listener go on.
#[test]
fn idle_and_slow_connections_are_bounded_and_closed() -> Result<()> {
    let node = api_node()?;
    node.kubectl_create(&pods_yaml("steady", 1), &[])?;
    let before = wait_running(&node, &names("steady", 1))?;
    let (mut idle, slow) = in_node_netns(&node, || {
        let idle: Vec<std::net::TcpStream> = (0..3000)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:10250").ok())
            .collect();
        // TLS done, then a request line a byte at a time, never finished.
        let mut connector =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("tls");
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let connector = connector.build();
        let slow: Vec<_> = (0..20)
            .filter_map(|_| {
                let tcp = std::net::TcpStream::connect("127.0.0.1:6443").ok()?;
                connector.connect("localhost", tcp).ok()
            })
            .collect();
        (idle, slow)
    })?;
    ensure!(
        idle.len() == 3000 && slow.len() == 20,
        "connections refused at connect"
    );
    std::thread::sleep(Duration::from_secs(2));
    let held = still_open(&mut idle);
    ensure!(
        held <= 1024,
        "{held} idle connections from one address held"
    );
    // Meanwhile everything works: the API (another listener), the pod, the agent.
    ensure!(node.kubectl_ok(&["get", "pods"])?.contains("steady-0"));
    let slow = std::sync::Arc::new(std::sync::Mutex::new(slow));
    let feeding = {
        let slow = slow.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                for s in slow.lock().expect("slow").iter_mut() {
                    let _ =
                        std::io::Write::write_all(s, &[b"GET /api/v1/pods HTTP/1.1\r\n"[i % 27]]);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(12));
    ensure!(
        still_open(&mut idle) == 0,
        "connections without a handshake still held"
    );
    feeding.join().expect("feeding thread");
    let open = slow
        .lock()
        .expect("slow")
        .iter_mut()
        .map(|s| {
            let _ = s.get_ref().set_nonblocking(true);
            is_open(s)
        })
        .filter(|open| *open)
        .count();
    ensure!(
        open == 0,
        "{open} slow-header connections still held after 40 s"
    );
    ensure!(wait_running(&node, &names("steady", 1))? == before);
    drop(idle);
    delete_all_and_check_clean(&node)
}

/// Objects kube-apiserver would refuse are refused with its errors, naming the field; a pod with
/// the longest valid name runs.
#[test]
fn oversized_and_malformed_objects_are_refused() -> Result<()> {
    let node = api_node()?;
    let refused = |yaml: &str, expect: &str| -> Result<()> {
        let out = node.kubectl_with("kubectl", &["create", "-f", "-"], Some(yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "accepted: {}",
            &yaml[..yaml.len().min(200)]
        );
        ensure!(
            stderr.contains(expect),
            "expected {expect:?} in: {}",
            &stderr[..stderr.len().min(600)]
        );
        ensure!(
            stderr.len() < 4096,
            "the error echoes the input: {} bytes",
            stderr.len()
        );
        Ok(())
    };
    let pod = |meta: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, {meta}}}\nspec:\n{extra}  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n")
    };
    refused(
        &pod(&format!("labels: {{k: {}}}", "v".repeat(1_000_000)), ""),
        "must be no more than 63 characters",
    )?;
    refused(&pod("labels: {'bad key': v}", ""), "metadata.labels")?;
    refused(
        &pod(&format!("annotations: {{k: {}}}", "a".repeat(300_000)), ""),
        "metadata.annotations: Too long: must have at most 262144 bytes",
    )?;
    refused(
        &pod("", "  volumes: [{name: v, emptyDir: {}}]\n").replace(
            "command: [sleep, '3600']}",
            "command: [sleep, '3600'], volumeMounts: [{name: v, mountPath: /proc/sys}]}",
        ),
        "spec.containers[0].volumeMounts[0].mountPath",
    )?;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: big}}\nstringData: {{k: {}}}\n",
        "s".repeat(1_100_000)
    );
    refused(&secret, "data: Too long: must have at most 1048576 bytes")?;
    for selector in ["a in ()", "a!=b,,,"] {
        let out = node.kubectl(&["get", "pods", "-l", selector]);
        ensure!(!out.status.success(), "selector {selector:?} accepted");
    }
    // A chunked 100 MB body: a clean 413, not a reset.
    let mut curl = node
        .api_curl(true)?
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-T",
            "-",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Transfer-Encoding: chunked",
        ])
        .arg("https://127.0.0.1:6443/api/v1/namespaces/default/pods")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = curl.stdin.take().context("curl stdin")?;
    let feeder = std::thread::spawn(move || {
        let block = vec![b' '; 1024 * 1024];
        for _ in 0..100 {
            if std::io::Write::write_all(&mut stdin, &block).is_err() {
                break;
            }
        }
    });
    let out = curl.wait_with_output()?;
    let _ = feeder.join();
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "413",
        "100 MB body: {}",
        nodelet_tests::describe_output(&out)
    );
    // 253 characters: valid, and it runs (its log directory name is cut to fit).
    let long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
    node.kubectl_create(
        &pod("", "").replace("name: p,", &format!("name: {long},")),
        &[],
    )?;
    wait_running(&node, &[long])?;
    delete_all_and_check_clean(&node)
}

/// The agent SIGKILLed in the middle of graceful deletions and of an image pull: after a
/// restart the deleted pods finish going (nothing of them left), the pulled image's pod runs,
/// the other pods are untouched, and no pull leaves scratch work behind.
#[test]
fn agent_sigkill_during_deletion_and_image_pull_loses_and_leaks_nothing() -> Result<()> {
    let mut node = TestNode::new()?;
    let registry = nodelet_tests::Registry::start(&node, 5011)?;
    registry.push(&node, "note", "fault/note", "v1")?;
    node.start_agent()?;
    node.wait_api()?;
    node.kubectl_create(&pods_yaml("keep", 5), &[])?;
    let keep = wait_running(&node, &names("keep", 5))?;
    for (round, delay_ms) in [0u64, 300, 900].into_iter().enumerate() {
        let batch = format!("gone{round}");
        node.kubectl_create(&pods_yaml(&batch, 5), &[])?;
        wait_running(&node, &names(&batch, 5))?;
        let doomed: Vec<String> = names(&batch, 5);
        let mut args = vec!["delete", "pods", "--wait=false"];
        args.extend(doomed.iter().map(String::as_str));
        node.kubectl_ok(&args)?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.stop_agent(Signal::SIGKILL)?;
        node.start_agent()?;
        node.wait_api()?;
        wait_for(&format!("round {round}: the deleted pods gone"), T, || {
            let pods = by_name(&node);
            doomed.iter().all(|n| !pods.contains_key(n)).then_some(())
        })
        .with_context(|| node.agent_log())?;
        ensure!(
            wait_running(&node, &names("keep", 5))? == keep,
            "round {round}: other pods changed"
        );
        ensure!(
            shims(&node).len() == 5,
            "round {round}: {} shims",
            shims(&node).len()
        );
    }
    // A pull cut short: the pod's image comes from the registry after the restart.
    let image = format!("{}/fault/note:v1", registry.address);
    for (round, delay_ms) in [0u64, 100].into_iter().enumerate() {
        let name = format!("pulled{round}");
        node.kubectl_create(
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: Always, command: [sleep, '3600']}}\n"),
            &[],
        )?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.stop_agent(Signal::SIGKILL)?;
        node.start_agent()?;
        node.wait_api()?;
        wait_running(&node, &[name])?;
    }
    let scratch = node.dir.join("root/images/tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "pull scratch left: {left:?}");
    delete_all_and_check_clean(&node)
}

/// The agent out of descriptors (its limit lowered under what it has open) for a while: every
/// call to a shim fails with EMFILE, and no pod is torn down for it; once descriptors are back,
/// the node goes on as before and new pods start.
#[test]
fn descriptor_exhaustion_tears_nothing_down() -> Result<()> {
    let node = api_node()?;
    node.kubectl_create(&pods_yaml("held", 3), &[])?;
    node.write_manifest("static.yaml", &nodelet_tests::sleeper_pod("static"));
    let held: Vec<String> = names("held", 3)
        .into_iter()
        .chain([format!("static-{}", node.name)])
        .collect();
    let before = wait_running(&node, &held)?;
    let pid = node.agent.as_ref().context("agent")?.pid.to_string();
    let limit = |n: &str| -> Result<()> {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}")])
            .output()?;
        ensure!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .context("open files limit")?
        .to_owned();
    // Below what it has open: each new descriptor fails with EMFILE.
    // A pod being deleted when the descriptors run out: its grace (5 s) ends while they are
    // out, so its SIGKILL and teardown fail; it must stay until they can be done, not be
    // reported gone with its processes left behind (the final clean check sees those).
    node.kubectl_create(
        &pods_yaml("doomed", 1).replace(
            "terminationGracePeriodSeconds: 1",
            "terminationGracePeriodSeconds: 5",
        ),
        &[],
    )?;
    wait_running(&node, &names("doomed", 1))?;
    node.kubectl_ok(&["delete", "pod", "doomed-0", "--wait=false"])?;
    std::thread::sleep(Duration::from_secs(1));
    limit("16:")?;
    // Past two resyncs of every worker (10 to 15 s each).
    std::thread::sleep(Duration::from_secs(30));
    limit(&format!("{soft}:"))?;
    wait_for("the deleted pod gone once descriptors are back", T, || {
        (!by_name(&node).contains_key("doomed-0")).then_some(())
    })?;
    let log = node.agent_log();
    ensure!(log.contains("shim did not answer"), "no call failed: {log}");
    ensure!(
        !log.contains("shim gone"),
        "a pod was taken for lost: {log}"
    );
    // The static pod too: an unreadable manifest directory is not an empty one.
    ensure!(wait_running(&node, &held)? == before, "pods changed");
    node.kubectl_create(&pods_yaml("after", 1), &[])?;
    wait_running(&node, &names("after", 1))?;
    node.remove_manifest("static.yaml");
    delete_all_and_check_clean(&node)
}
