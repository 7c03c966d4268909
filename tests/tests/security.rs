//! A pod's confinement from its securityContext and host namespaces: seccomp profiles
//! (RuntimeDefault, Localhost, Unconfined) applied to the container and to every process started
//! in it, and hostNetwork/hostPID/hostIPC pods that share the node's namespaces.

use std::time::Duration;

use anyhow::{Context, Result};
use nodelet_tests::{wait_for, TestNode};

const T: Duration = Duration::from_secs(60);

fn exec(node: &TestNode, pod: &str, container: &str, script: &str) -> (bool, String) {
    let out = node.kubectl(&["exec", pod, "-c", container, "--", "sh", "-c", script]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn seccomp_profiles_confine_containers_and_their_execs() -> Result<()> {
    let node = TestNode::with_api()?;
    let profiles = node.dir.join("root/seccomp/profiles");
    std::fs::create_dir_all(&profiles)?;
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )?;
    node.kubectl_create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: confined}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: default
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    # The probe runs through the exec path of probes: it must be filtered too.
    readinessProbe:
      exec: {command: [sh, -c, "grep -q '^Seccomp:.2' /proc/self/status"]}
      periodSeconds: 1
  - name: free
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {seccompProfile: {type: Unconfined}}
  - name: local
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/no-mkdir.json}}
  - name: admin
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {capabilities: {add: [SYS_ADMIN]}}
"#,
        &[],
    )?;
    let p = wait_for("confined ready", T, || {
        let p = node.api_pod("confined")?;
        ["default", "free", "local", "admin"]
            .iter()
            .all(|c| TestNode::running(&p, c))
            .then_some(())?;
        (TestNode::container_status(&p, "default")["ready"] == true).then_some(p)
    })
    .with_context(|| node.agent_log())?;
    // The first process of each container, as the host sees it.
    for (c, mode) in [
        ("default", "2"),
        ("free", "0"),
        ("local", "2"),
        ("admin", "2"),
    ] {
        let pid = node.container_pid(&p, c)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let seccomp = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or_default();
        assert_eq!(seccomp.trim(), mode, "{c}");
    }
    // RuntimeDefault refuses what it leaves out (new namespaces, keyrings) in kubectl exec too.
    let (ok, out) = exec(&node, "confined", "default", "unshare -U true");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = exec(&node, "confined", "free", "unshare -U true && echo made");
    assert!(ok && out.contains("made"), "{out}");
    // ... and allows more for a container holding CAP_SYS_ADMIN, as containerd's profile does.
    let (ok, out) = exec(&node, "confined", "admin", "unshare -m true && echo made");
    assert!(ok && out.contains("made"), "{out}");
    let (ok, out) = exec(&node, "confined", "local", "mkdir /tmp/x");
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, _) = exec(&node, "confined", "local", "touch /tmp/y");
    assert!(ok, "the Localhost profile allows the rest");

    // A profile that is not there: kubelet's container config error, naming the file.
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n    securityContext: {seccompProfile: {type: Localhost, localhostProfile: nope.json}}\n",
        &[],
    )?;
    wait_for("missing profile refused", T, || {
        let p = node.api_pod("missing")?;
        let w = TestNode::container_status(&p, "c")["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError"
            && w["message"]
                .as_str()?
                .contains("cannot load seccomp profile")
            && w["message"].as_str()?.contains("nope.json"))
        .then_some(())
    })?;
    let bad = node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/x}}\n",
        &[],
    );
    let err = format!("{:?}", bad.err());
    assert!(
        err.contains("spec.containers[0].securityContext.seccompProfile.localhostProfile"),
        "{err}"
    );

    node.kubectl_ok(&["delete", "pod", "confined", "missing"])?;
    node.settled()
}

#[test]
fn host_namespaces_are_the_nodes() -> Result<()> {
    let mut node = TestNode::new()?;
    // An address of the node's own (it has no nodeIP set: the agent finds it).
    for args in [
        "link add uplink0 type veth peer name uplink1",
        "addr add 192.0.2.10/24 dev uplink0",
        "link set uplink0 up",
    ] {
        let out = node.net_command("ip").args(args.split(' ')).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.start_agent()?;
    node.wait_api()?;
    node.kubectl_create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: host}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  hostPID: true
  hostIPC: true
  containers:
  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
"#,
        &[],
    )?;
    node.kubectl_create(&nodelet_tests::sleeper_pod("plain"), &[])?;
    let p = wait_for("host running", T, || {
        node.api_pod("host").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    let plain = wait_for("plain running", T, || {
        node.api_pod("plain").filter(|p| TestNode::running(p, "c"))
    })?;
    let agent = node.agent_pid();
    let ns = |pid: i32, name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap();
    let pid = node.container_pid(&p, "c")?;
    for name in ["net", "pid", "ipc", "uts"] {
        assert_eq!(ns(pid, name), ns(agent, name), "{name}");
    }
    let other = node.container_pid(&plain, "c")?;
    for name in ["net", "pid", "ipc", "uts"] {
        assert_ne!(ns(other, name), ns(agent, name), "{name} of a plain pod");
    }
    // Its IP is the node's; the container sees the node's processes and hostname.
    assert_eq!(p["status"]["podIP"], "192.0.2.10", "{}", p["status"]);
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"]);
    let (ok, out) = exec(&node, "host", "c", "ps -o pid,comm | grep -c nodelet");
    assert!(ok && out.trim() != "0", "{out}");
    // The node's links (by name: a bridge's state may change as its ports come up).
    let links = || -> Result<Vec<String>> {
        let out = node.net_command("ip").args(["-o", "link"]).output()?.stdout;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_owned))
            .collect())
    };
    let links_before = links()?;
    node.kubectl_ok(&["delete", "pod", "host"])?;
    wait_for("host gone", T, || {
        node.api_pod("host").is_none().then_some(())
    })?;
    // Deleting it took nothing of the node's network with it.
    assert_eq!(links_before, links()?);
    node.kubectl_ok(&["delete", "pod", "plain"])?;
    node.settled()
}

/// kubelet's node admission (sysctls, AppArmor) and the container checks of runAsNonRoot and
/// readOnlyRootFilesystem.
#[test]
fn sysctls_apparmor_and_users_as_kubelet_admits_them() -> Result<()> {
    let mut node = TestNode::with_config("node1", "allowedUnsafeSysctls: [\"kernel.msg*\"]\n")?;
    node.start_agent()?;
    node.wait_api()?;
    let pod = |name: &str, pod_sc: &str, c_sc: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  securityContext: {{{pod_sc}}}\n  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600'], securityContext: {{{c_sc}}}}}\n")
    };
    node.kubectl_create(&pod("tuned", "sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: '80'}, {name: kernel.msgmax, value: '65536'}]", "readOnlyRootFilesystem: true"), &[])?;
    node.kubectl_create(
        &pod(
            "unsafe",
            "sysctls: [{name: kernel.sem, value: '250 32000 32 128'}]",
            "",
        ),
        &[],
    )?;
    node.kubectl_create(
        &pod("armored", "appArmorProfile: {type: RuntimeDefault}", ""),
        &[],
    )?;
    node.kubectl_create(&pod("rooted", "runAsNonRoot: true", ""), &[])?;
    node.kubectl_create(
        &pod("nonroot", "runAsNonRoot: true", "runAsUser: 1000"),
        &[],
    )?;
    let p = wait_for("tuned and nonroot running", T, || {
        let nonroot = node.api_pod("nonroot")?;
        TestNode::running(&nonroot, "c").then_some(())?;
        node.api_pod("tuned").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    let sysctl = |path: &str| -> Result<String> {
        let out = node.exec(&p, "c", &["cat", path])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    assert_eq!(
        sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start")?,
        "80"
    );
    assert_eq!(sysctl("/proc/sys/kernel/msgmax")?, "65536");
    let node_value = node
        .net_command("cat")
        .arg("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .output()?;
    assert_ne!(
        String::from_utf8_lossy(&node_value.stdout).trim(),
        "80",
        "the node's own value is untouched"
    );
    let (ok, out) = exec(&node, "tuned", "c", "touch /x");
    assert!(!ok && out.contains("Read-only file system"), "{out}");
    let (ok, _) = exec(&node, "tuned", "c", "touch /tmp/x || touch /dev/shm/x");
    assert!(ok, "volumes and /dev/shm stay writable");

    for (name, reason, says) in [
        (
            "unsafe",
            "SysctlForbidden",
            "Pod was rejected: forbidden sysctl: \"kernel.sem\" not allowlisted",
        ),
        (
            "armored",
            "AppArmor",
            "Pod was rejected: Cannot enforce AppArmor: ",
        ),
    ] {
        let p = wait_for(&format!("{name} rejected"), T, || {
            node.api_pod(name)
                .filter(|p| p["status"]["phase"] == "Failed")
        })?;
        assert_eq!(p["status"]["reason"], reason, "{}", p["status"]);
        assert!(
            p["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with(says),
            "{}",
            p["status"]
        );
        assert!(
            p["status"]["containerStatuses"].is_null(),
            "nothing ran: {}",
            p["status"]
        );
    }
    let uid = |name: &str| {
        node.api_pod(name)
            .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
    };
    let rejected = uid("unsafe").unwrap_or_default();
    assert!(
        !node.dir.join("run/pods").join(&rejected).exists(),
        "no sandbox for a rejected pod"
    );
    wait_for("rooted refused", T, || {
        let p = node.api_pod("rooted")?;
        let w = TestNode::container_status(&p, "c")["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError"
            && w["message"].as_str()?.starts_with(
                "container has runAsNonRoot and image will run as root (pod: \"rooted_default(",
            ))
        .then_some(())
    })?;
    node.kubectl_ok(&[
        "delete", "pod", "tuned", "unsafe", "armored", "rooted", "nonroot",
    ])?;
    node.settled()
}

/// `hostPort`: the node's port leads to the pod (DNAT, as the portmap plugin maps it), only
/// while the pod lives; a second pod asking for the same port waits, as kube-scheduler has it.
#[test]
fn host_ports_reach_the_pod_and_go_with_it() -> Result<()> {
    let mut node = TestNode::new()?;
    for args in [
        "link add uplink0 type veth peer name uplink1",
        "addr add 192.0.2.10/24 dev uplink0",
        "link set uplink0 up",
        "link set uplink1 up",
    ] {
        let out = node.net_command("ip").args(args.split(' ')).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.start_agent()?;
    node.wait_api()?;
    let web = |name: &str, text: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'echo {text} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']\n    ports: [{{containerPort: 8080, hostPort: 18080}}]\n")
    };
    let get = || -> String {
        let out = node
            .net_command("curl")
            .args(["-s", "--max-time", "3", "http://192.0.2.10:18080/"])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    node.kubectl_create(&web("first", "one"), &[])?;
    let p = wait_for("first running", T, || {
        node.api_pod("first").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    wait_for("served through the host port", T, || {
        (get() == "one").then_some(())
    })?;
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let rules = || -> String {
        let out = node
            .net_command("nft")
            .args(["list", "table", "inet", "nodelet_hostports"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules().contains(&uid), "{}", rules());

    node.kubectl_create(&web("second", "two"), &[])?;
    wait_for("second waits for the port", T, || {
        let events = node
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=second",
            ])
            .ok()?;
        events
            .contains("didn't have free ports for the requested pod ports")
            .then_some(())
    })?;
    node.kubectl_ok(&["delete", "pod", "first"])?;
    wait_for("first gone", T, || {
        node.api_pod("first").is_none().then_some(())
    })?;
    assert!(
        !rules().contains(&uid),
        "the pod's rules went with it: {}",
        rules()
    );
    // The port is free: the second pod is scheduled and takes it.
    wait_for("second serves", T, || (get() == "two").then_some(()))?;
    node.kubectl_ok(&["delete", "pod", "second"])?;
    wait_for("pods gone", T, || node.processes().is_empty().then_some(()))?;
    assert_eq!(get(), "", "nothing answers on the port any more");
    node.assert_clean()
}

/// `kubectl debug --target`: an ephemeral container added through the `ephemeralcontainers`
/// subresource runs once in the pod, in the target's PID namespace, and may not be changed.
#[test]
fn kubectl_debug_runs_an_ephemeral_container_beside_its_target() -> Result<()> {
    let node = TestNode::with_api()?;
    node.kubectl_create(&nodelet_tests::sleeper_pod("target"), &[])?;
    wait_for("target running", T, || {
        node.api_pod("target").filter(|p| TestNode::running(p, "c"))
    })?;
    let out = node.kubectl_ok(&[
        "debug",
        "target",
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--target=c",
        "--container=dbg",
        "--",
        "sh",
        "-c",
        "ps -o pid,args; sleep 3600",
    ])?;
    let _ = out;
    let p = wait_for("dbg running", T, || {
        let p = node.api_pod("target")?;
        let s = p["status"]["ephemeralContainerStatuses"]
            .as_array()?
            .first()?
            .clone();
        (s["name"] == "dbg" && s["state"]["running"].is_object()).then_some(p)
    })
    .with_context(|| node.agent_log())?;
    // It sees the target's processes: the target's sleep is pid 1 there.
    let logs = wait_for("dbg's output", T, || {
        let logs = node.kubectl_ok(&["logs", "target", "-c", "dbg"]).ok()?;
        logs.contains("sleep 3600").then_some(logs)
    })?;
    assert!(
        logs.lines()
            .any(|l| l.trim().starts_with("1 ") && l.contains("sleep 3600")),
        "{logs}"
    );
    let (ok, out) = exec(&node, "target", "dbg", "echo inside");
    assert!(ok && out.contains("inside"), "{out}");
    // Existing ephemeral containers stay as they are; new ones may not have what only regular
    // containers have.
    let mut pod = p.clone();
    pod["spec"]["ephemeralContainers"] = serde_json::json!([]);
    let put = node
        .api_curl(true)?
        .args(["-X", "PUT", "-H", "Content-Type: application/json", "-d"])
        .arg(pod.to_string())
        .arg(format!(
            "{}/api/v1/namespaces/default/pods/target/ephemeralcontainers",
            node.api_url()
        ))
        .output()?;
    let put = String::from_utf8_lossy(&put.stdout).into_owned();
    assert!(
        put.contains("existing ephemeral containers \\\"dbg\\\" may not be removed"),
        "{put}"
    );
    let patch = node
        .api_curl(true)?
        .args(["-X", "PATCH", "-H", "Content-Type: application/strategic-merge-patch+json", "-d"])
        .arg(r#"{"spec":{"ephemeralContainers":[{"name":"web","image":"busybox","ports":[{"containerPort":80}]}]}}"#)
        .arg(format!("{}/api/v1/namespaces/default/pods/target/ephemeralcontainers", node.api_url()))
        .output()?;
    let patch = String::from_utf8_lossy(&patch.stdout).into_owned();
    assert!(patch.contains("spec.ephemeralContainers[1].ports: Forbidden: cannot be set for an Ephemeral Container"), "{patch}");
    // `kubectl debug -it`: a shell on a terminal of its own, beside the target's processes.
    let out = node.kubectl_in_terminal(
        &[
            "debug",
            "-it",
            "target",
            "--image=busybox",
            "--image-pull-policy=IfNotPresent",
            "--target=c",
            "--container=shell",
            "--",
            "sh",
            "-c",
            "read x; echo \"shell got $x on $(tty), target is $(cat /proc/1/cmdline | tr '\\0' ' ')\"",
        ],
        24,
        80,
        "hi\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("shell got hi on /dev/pts/0, target is sleep 3600"),
        "{shown} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    node.kubectl_ok(&["delete", "pod", "target"])?;
    node.settled()
}

/// `maxPods`: the scheduler leaves a pod Pending once the node is full ("Too many pods"), and
/// the node itself rejects one that reaches it anyway (a static pod) with kubelet's OutOfpods.
#[test]
fn max_pods_holds_as_kubelet_admits() -> Result<()> {
    let mut node = TestNode::with_config("node1", "maxPods: 2\n")?;
    node.start_agent()?;
    node.wait_api()?;
    for name in ["one", "two"] {
        node.kubectl_create(&nodelet_tests::sleeper_pod(name), &[])?;
    }
    wait_for("two pods running", T, || {
        ["one", "two"]
            .iter()
            .all(|n| node.api_pod(n).is_some_and(|p| TestNode::running(&p, "c")))
            .then_some(())
    })
    .with_context(|| node.agent_log())?;
    let capacity = node.kubectl_ok(&[
        "get",
        "node",
        "node1",
        "-o",
        "jsonpath={.status.capacity.pods}",
    ])?;
    assert_eq!(capacity, "2");
    node.kubectl_create(&nodelet_tests::sleeper_pod("three"), &[])?;
    wait_for("three waits", T, || {
        let events = node
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=three",
            ])
            .ok()?;
        events
            .contains("0/1 nodes are available: 1 Too many pods")
            .then_some(())
    })?;
    node.write_manifest("extra.yaml", &nodelet_tests::sleeper_pod("extra"));
    let extra = wait_for("the static pod rejected", T, || {
        node.pod("extra")
            .filter(|p| p["status"]["phase"] == "Failed")
    })?;
    assert_eq!(extra["status"]["reason"], "OutOfpods");
    assert_eq!(
        extra["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2"
    );
    // A place frees: the waiting pod is scheduled and runs.
    node.kubectl_ok(&["delete", "pod", "one"])?;
    wait_for("three running", T, || {
        node.api_pod("three").filter(|p| TestNode::running(p, "c"))
    })?;
    node.remove_manifest("extra.yaml");
    node.kubectl_ok(&["delete", "pod", "two", "three"])?;
    wait_for("pods gone", T, || node.processes().is_empty().then_some(()))?;
    wait_for("static pod gone", T, || {
        node.pod("extra").is_none().then_some(())
    })?;
    node.assert_clean()
}

/// `stdin: true`: the process reads what an attach session sends (`kubectl run -i`), and EOF
/// when that session ends (`stdinOnce`, which `kubectl run -i` sets); with `-it`, a terminal.
#[test]
fn kubectl_run_i_feeds_the_containers_stdin() -> Result<()> {
    let node = TestNode::with_api()?;
    let out = node.kubectl_with(
        "kubectl",
        &[
            "run",
            "reader",
            "--image=busybox",
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "-i",
            "--",
            "sh",
            "-c",
            "while read l; do echo \"got $l\"; done; echo done",
        ],
        Some("hello\nworld\n"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && text.contains("got hello")
            && text.contains("got world")
            && text.contains("done"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = wait_for("reader completed", T, || {
        node.api_pod("reader")
            .filter(|p| p["status"]["phase"] == "Succeeded")
    })?;
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    // With a terminal (`kubectl run -it`): the process's streams are a terminal of the
    // container's devpts, sized as kubectl's own, its input typed at kubectl's terminal.
    let script = "read x; i=0; while [ \"$(stty size)\" = '0 0' ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; echo \"got $x on $(tty) of $(stty size) as $TERM\"";
    let out = node.kubectl_in_terminal(
        &[
            "run",
            "term",
            "--image=busybox",
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "-it",
            "--",
            "sh",
            "-c",
            script,
        ],
        45,
        123,
        "hello\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("got hello on /dev/pts/0 of 45 123 as xterm"),
        "{shown} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("term completed", T, || {
        node.api_pod("term")
            .filter(|p| p["status"]["phase"] == "Succeeded")
    })?;
    let logs = node.kubectl_ok(&["logs", "term"])?;
    assert!(logs.contains("got hello on /dev/pts/0"), "{logs}");
    node.kubectl_ok(&["delete", "pod", "reader", "term"])?;
    // Both finished: they leave the API at once, and the node tears them down after.
    node.settled()?;
    assert!(!node.dir.join("run/pods").join(uid).exists());
    Ok(())
}

/// `hostUsers: false`: the pod's processes are root in a user namespace of their own, mapped to
/// 65,536 ids of the node allocated to the pod; its network belongs to that namespace (root may
/// bind port 80 there), its image layers and volumes are idmapped into it (what the container
/// writes to a volume is owned on disk by the id it has inside), and exec joins it too.
#[test]
fn host_users_false_runs_the_pod_in_a_user_namespace_of_its_own() -> Result<()> {
    let mut node = TestNode::with_api()?;
    let pod = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: userns}}}}
spec:
  terminationGracePeriodSeconds: 1
  hostUsers: false
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - name: info
    downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: data, mountPath: /data}}, {{name: info, mountPath: /info}}]
    command: [sh, -c, 'touch /made-in-rootfs && echo made > /data/f && httpd -p 80 -h /data && echo serving; sleep 3600']
    # Probes start through the shim's own exec path: they join the namespace too.
    readinessProbe:
      exec: {{command: [sh, -c, '! grep -q "^ *0 *0 " /proc/self/uid_map']}}
      periodSeconds: 1
"#
        )
    };
    node.kubectl_create(&pod("ns1"), &[])?;
    node.kubectl_create(&pod("ns2"), &[])?;
    for name in ["ns1", "ns2"] {
        wait_for("pod ready", T, || {
            node.api_pod(name)
                .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
        })
        .with_context(|| node.agent_log())?;
    }
    let map = |node: &TestNode, name: &str| -> Result<(u64, u64)> {
        let (ok, out) = exec(node, name, "c", "cat /proc/self/uid_map");
        anyhow::ensure!(ok, "{out}");
        let f: Vec<u64> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        anyhow::ensure!(f.len() == 3 && f[0] == 0 && f[2] == 65536, "{out}");
        Ok((f[1], f[2]))
    };
    let (one, two) = (map(&node, "ns1")?, map(&node, "ns2")?);
    assert!(
        one.0 >= 65536 && two.0 >= 65536 && one.0 != two.0,
        "{one:?} {two:?}"
    );
    let (ok, out) = exec(
        &node,
        "ns1",
        "c",
        "id -u; ls -ln /made-in-rootfs /data/f /bin/busybox; cat /info/labels; echo; wget -qO- http://127.0.0.1/f",
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "{out}");
    // Root inside owns what it made, the image's files (idmapped layers) and the volume's.
    for l in &lines[1..4] {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() > 3 && f[2] == "0" && f[3] == "0", "{l}: {out}");
    }
    assert!(out.contains("app=\"userns\""), "{out}");
    assert!(
        out.contains("\nmade"),
        "port 80 bound by the pod's root: {out}"
    );
    // On the node: the process runs as the pod's ids; the volume's file is owned by 0 on disk
    // (the id it has inside), the container's own files by the pod's root.
    let uid = node.api_pod("ns1").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pid = node
        .processes()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("httpd"))
                && std::fs::read_to_string(format!("/proc/{p}/status"))
                    .is_ok_and(|s| s.contains(&format!("\t{}\t", one.0)))
        })
        .with_context(|| "no httpd running as the pod's root on the node")?;
    use std::os::unix::fs::MetadataExt;
    let volume_file = node.dir.join(format!(
        "root/pods/{uid}/volumes/kubernetes.io~empty-dir/data/f"
    ));
    let meta =
        std::fs::metadata(&volume_file).with_context(|| volume_file.display().to_string())?;
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let record = std::fs::read_to_string(node.dir.join(format!("root/pods/{uid}/userns")))?;
    assert!(
        record.contains(&format!("\"hostId\":{}", one.0)),
        "{record}"
    );
    // A restarted agent takes the pods back as they are, in the same namespaces.
    node.stop_agent(nix::sys::signal::Signal::SIGKILL)?;
    node.start_agent()?;
    wait_for("pods adopted", T, || {
        let p = node.api_pod("ns1")?;
        (p["status"]["containerStatuses"][0]["ready"] == true).then_some(p)
    })?;
    assert_eq!(map(&node, "ns1")?, one);
    assert!(
        node.processes().contains(&pid),
        "the process was not restarted"
    );

    // What cannot work in one is refused as kube-apiserver and kubelet refuse it.
    let refused = node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: both}\nspec: {hostUsers: false, hostNetwork: true, containers: [{name: c, image: busybox}]}\n",
        &[],
    );
    let err = format!("{refused:?}");
    assert!(
        err.contains("spec.hostNetwork: Forbidden: when `hostUsers` is false"),
        "{err}"
    );
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: far}\nspec: {hostUsers: false, terminationGracePeriodSeconds: 1, securityContext: {runAsUser: 70000}, containers: [{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]}\n",
        &[],
    )?;
    let waiting = wait_for("far refused", T, || {
        let p = node.api_pod("far")?;
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then_some(w)
    })?;
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("runAsUser 70000 is outside the pod's user namespace")),
        "{waiting}"
    );
    node.kubectl_ok(&["delete", "pod", "ns1", "ns2", "far"])?;
    node.settled()?;
    assert!(!node.dir.join(format!("root/pods/{uid}")).exists());
    Ok(())
}
