//! The container lifecycle of the pod spec, on real pods in test nodes: init containers, sidecars,
//! probes, lifecycle hooks and termination messages, seen where a user looks (kubectl's STATUS
//! column, `describe` events, the pod's status).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use nodelet_tests::{wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn api_node() -> Result<TestNode> {
    let node = TestNode::with_api()?;
    Ok(node)
}

fn pod(node: &TestNode, name: &str) -> Option<Value> {
    node.api_pod(name)
}

fn wait_pod(
    node: &TestNode,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(&format!("pod {name}: {what}"), T, || {
        pod(node, name).filter(|p| check(p))
    })
    .with_context(|| {
        format!(
            "last seen: {:#}\nagent log:\n{}",
            pod(node, name).unwrap_or_default(),
            node.agent_log()
        )
    })
}

/// `kubectl get pod NAME`'s READY, STATUS and RESTARTS cells.
fn row(node: &TestNode, name: &str) -> (String, String, String) {
    let out = node.kubectl(&["get", "pod", name, "--no-headers"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cells: Vec<&str> = text.split_whitespace().collect();
    let cell = |i: usize| cells.get(i).copied().unwrap_or_default().to_owned();
    (cell(1), cell(2), cell(3))
}

/// Polls the STATUS column until it shows `want`, collecting every value seen.
fn wait_status(node: &TestNode, name: &str, want: &str, seen: &mut BTreeSet<String>) -> Result<()> {
    wait_for(&format!("pod {name} STATUS {want}"), T, || {
        let (_, status, _) = row(node, name);
        seen.insert(status.clone());
        (status == want).then_some(())
    })
    .with_context(|| {
        format!(
            "STATUS values seen: {seen:?}\nagent log:\n{}",
            node.agent_log()
        )
    })
}

fn status_of<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// `kubectl create` of pods whose busybox containers use the node's imported image (the
/// tag-less reference would default to pulling it).
fn create(node: &TestNode, yaml: &str) -> Result<String> {
    let mut out = String::new();
    for line in yaml.lines() {
        out.push_str(line);
        out.push('\n');
        let body = line.trim_start();
        let indent = line.len() - body.len() + if body.starts_with("- ") { 2 } else { 0 };
        if body.trim_start_matches("- ") == "image: busybox" {
            out.push_str(&" ".repeat(indent));
            out.push_str("imagePullPolicy: IfNotPresent\n");
        }
    }
    let out = out.replace(
        "image: busybox,",
        "image: busybox, imagePullPolicy: IfNotPresent,",
    );
    node.kubectl_create(&out, &[])
}

/// Waits for every process of the node's pods to be gone, then checks that nothing is left
/// (a deleted pod leaves the API before its teardown ends).
fn describe(node: &TestNode, name: &str) -> String {
    node.kubectl_ok(&["describe", "pod", name])
        .unwrap_or_else(|e| format!("{e:#}"))
}

#[test]
fn init_containers_run_in_order_before_the_app_and_share_its_volumes() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: www, emptyDir: {}}]
  initContainers:
  - name: fetch
    image: busybox
    command: [sh, -c, "sleep 2; echo first > /www/index.html"]
    volumeMounts: [{name: www, mountPath: /www}]
  - name: decorate
    image: busybox
    command: [sh, -c, "sleep 2; test -f /www/index.html && echo second >> /www/index.html"]
    volumeMounts: [{name: www, mountPath: /www}]
  containers:
  - name: server
    image: busybox
    command: [httpd, -f, -p, "8080", -h, /www]
    volumeMounts: [{name: www, mountPath: /www}]
"#,
    )?;
    let mut seen = BTreeSet::new();
    wait_status(&node, "web", "Init:1/2", &mut seen)?;
    let p = pod(&node, "web").context("pod")?;
    assert_eq!(condition(&p, "Initialized"), "False");
    assert_eq!(
        status_of(&p, "containerStatuses", "server")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    wait_status(&node, "web", "Running", &mut seen)?;
    assert!(seen.contains("Init:0/2"), "{seen:?}");
    let p = wait_pod(&node, "web", "ready", |p| condition(p, "Ready") == "True")?;
    assert_eq!(condition(&p, "Initialized"), "True");
    for init in ["fetch", "decorate"] {
        let s = status_of(&p, "initContainerStatuses", init);
        assert_eq!(s["state"]["terminated"]["reason"], "Completed", "{s}");
        assert_eq!(s["ready"], true);
    }
    let page = node.exec(&p, "server", &["wget", "-qO-", "http://127.0.0.1:8080/"])?;
    assert_eq!(String::from_utf8_lossy(&page.stdout), "first\nsecond\n");
    assert_eq!(row(&node, "web").0, "1/1");
    // The app container restarting does not run the init containers again.
    let init_id = status_of(&p, "initContainerStatuses", "fetch")["containerID"].clone();
    let server = node.container_pid(&p, "server")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), Signal::SIGKILL)?;
    let p = wait_pod(&node, "web", "server restarted", |p| {
        status_of(p, "containerStatuses", "server")["restartCount"] == 1
            && TestNode::running(p, "server")
    })?;
    let fetch = status_of(&p, "initContainerStatuses", "fetch");
    assert_eq!(
        (fetch["containerID"].clone(), fetch["restartCount"].clone()),
        (init_id, 0.into())
    );
    node.kubectl_ok(&["delete", "pod", "web"])?;
    node.settled()
}

#[test]
fn a_failing_init_container_follows_the_pods_restart_policy() -> Result<()> {
    let node = api_node()?;
    let yaml = |name: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  initContainers:\n  - {{name: check, image: busybox, command: [sh, -c, 'echo no database; exit 3']}}\n  containers:\n  - {{name: app, image: busybox, command: [sleep, '3600']}}\n"
        )
    };
    create(&node, &yaml("never", "Never"))?;
    create(&node, &yaml("always", "Always"))?;
    let mut seen = BTreeSet::new();
    wait_status(&node, "never", "Init:Error", &mut seen)?;
    let p = wait_pod(&node, "never", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })?;
    let check = status_of(&p, "initContainerStatuses", "check");
    assert_eq!(check["state"]["terminated"]["exitCode"], 3);
    assert_eq!(check["restartCount"], 0);
    assert!(
        status_of(&p, "containerStatuses", "app")["containerID"].is_null(),
        "the app never ran: {p:#}"
    );
    let mut seen = BTreeSet::new();
    wait_status(&node, "always", "Init:CrashLoopBackOff", &mut seen)?;
    let p = pod(&node, "always").context("pod")?;
    assert_eq!(p["status"]["phase"], "Pending");
    let check = status_of(&p, "initContainerStatuses", "check");
    assert!(check["restartCount"].as_i64() >= Some(1), "{check}");
    assert_eq!(check["lastState"]["terminated"]["exitCode"], 3);
    let events = describe(&node, "always");
    assert!(
        events.contains("Back-off restarting failed container check"),
        "{events}"
    );
    // Events about an init container name it as kubelet does.
    let events: Value = serde_json::from_str(&node.kubectl_ok(&["get", "events", "-o", "json"])?)?;
    let paths: BTreeSet<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == "always")
        .filter_map(|e| e["involvedObject"]["fieldPath"].as_str().map(str::to_owned))
        .collect();
    assert!(paths.contains("spec.initContainers{check}"), "{paths:?}");
    node.kubectl_ok(&["delete", "pod", "never", "always"])?;
    node.settled()
}

#[test]
fn a_sidecar_runs_beside_the_app_and_a_finished_job_stops_it() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  volumes: [{name: logs, emptyDir: {}}]
  initContainers:
  - name: shipper
    image: busybox
    restartPolicy: Always
    command: [sh, -c, "touch /logs/app.log; exec tail -f /logs/app.log"]
    volumeMounts: [{name: logs, mountPath: /logs}]
    startupProbe: {exec: {command: [test, -f, /logs/app.log]}, periodSeconds: 1}
  containers:
  - name: work
    image: busybox
    command: [sh, -c, "for i in 1 2 3; do echo line $i >> /logs/app.log; sleep 1; done"]
    volumeMounts: [{name: logs, mountPath: /logs}]
"#,
    )?;
    let p = wait_pod(&node, "job", "both running", |p| {
        TestNode::running(p, "work")
            && status_of(p, "initContainerStatuses", "shipper")["started"] == true
    })?;
    assert_eq!(p["status"]["phase"], "Running");
    let mut seen = BTreeSet::new();
    wait_status(&node, "job", "Completed", &mut seen)?;
    let p = wait_pod(&node, "job", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    let shipper = status_of(&p, "initContainerStatuses", "shipper");
    assert!(
        shipper["state"]["terminated"].is_object(),
        "the sidecar is stopped: {shipper}"
    );
    assert_eq!(
        status_of(&p, "containerStatuses", "work")["state"]["terminated"]["exitCode"],
        0
    );
    let logs = node.kubectl_ok(&["logs", "job", "-c", "shipper"])?;
    assert_eq!(logs, "line 1\nline 2\nline 3\n");
    let (ready, _, _) = row(&node, "job");
    assert_eq!(ready, "0/2");
    node.kubectl_ok(&["delete", "pod", "job"])?;
    node.settled()
}

#[test]
fn liveness_restarts_exactly_the_failing_container_and_readiness_flips_both_ways() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: flaky
    image: busybox
    command: [sh, -c, "touch /tmp/healthy; exec sleep 3600"]
    livenessProbe: {exec: {command: [test, -f, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}
  - name: web
    image: busybox
    command: [sh, -c, "mkdir -p /www; echo ok > /www/healthz; exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
  - name: late
    image: busybox
    command: [sh, -c, "exec httpd -f -p 8081 -h /tmp"]
    readinessProbe: {tcpSocket: {port: 8081}, initialDelaySeconds: 3, periodSeconds: 1}
"#,
    )?;
    // Not ready before its initial delay, ready after it.
    let p = wait_pod(&node, "probed", "all running", |p| {
        ["flaky", "web", "late"]
            .iter()
            .all(|c| TestNode::running(p, c))
    })?;
    let late = status_of(&p, "containerStatuses", "late");
    let started = Instant::now();
    assert_eq!(late["ready"], false, "{late}");
    wait_pod(&node, "probed", "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    ensure!(
        started.elapsed() >= Duration::from_secs(1),
        "late was ready before its delay"
    );
    assert_eq!(row(&node, "probed").0, "3/3");

    // Readiness follows the app, both ways.
    node.kubectl_ok(&["exec", "probed", "-c", "web", "--", "rm", "/www/healthz"])?;
    let p = wait_pod(&node, "probed", "web unready", |p| {
        condition(p, "Ready") == "False"
    })?;
    assert_eq!(status_of(&p, "containerStatuses", "web")["ready"], false);
    assert_eq!(condition(&p, "ContainersReady"), "False");
    assert!(TestNode::running(&p, "web"), "readiness restarts nothing");
    assert_eq!(row(&node, "probed").0, "2/3");
    node.kubectl_ok(&[
        "exec",
        "probed",
        "-c",
        "web",
        "--",
        "sh",
        "-c",
        "echo ok > /www/healthz",
    ])?;
    wait_pod(&node, "probed", "ready again", |p| {
        condition(p, "Ready") == "True"
    })?;

    // A failed liveness probe restarts that container, and only it.
    let before = |p: &Value, c: &str| status_of(p, "containerStatuses", c)["containerID"].clone();
    let (web, late) = (before(&p, "web"), before(&p, "late"));
    node.kubectl_ok(&["exec", "probed", "-c", "flaky", "--", "rm", "/tmp/healthy"])?;
    let p = wait_pod(&node, "probed", "flaky restarted", |p| {
        status_of(p, "containerStatuses", "flaky")["restartCount"] == 1
            && TestNode::running(p, "flaky")
    })?;
    let flaky = status_of(&p, "containerStatuses", "flaky");
    assert_eq!(flaky["lastState"]["terminated"]["exitCode"], 137, "{flaky}");
    assert_eq!(flaky["lastState"]["terminated"]["reason"], "Error");
    for (c, id) in [("web", web), ("late", late)] {
        let s = status_of(&p, "containerStatuses", c);
        assert_eq!(
            (s["containerID"].clone(), s["restartCount"].clone()),
            (id, 0.into()),
            "{c}"
        );
    }
    let events = describe(&node, "probed");
    for want in [
        "Readiness probe failed: HTTP probe failed with statuscode: 404",
        "Liveness probe failed:",
        "Container flaky failed liveness probe, will be restarted",
    ] {
        assert!(events.contains(want), "{want:?} in:\n{events}");
    }
    node.kubectl_ok(&["delete", "pod", "probed"])?;
    node.settled()
}

#[test]
fn a_startup_probe_holds_liveness_back_and_restarts_a_container_that_never_starts() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: slow
    image: busybox
    command: [sh, -c, "sleep 4; touch /tmp/up; exec sleep 3600"]
    startupProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1, failureThreshold: 15}
    livenessProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1, failureThreshold: 1}
    readinessProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1}
  - name: never
    image: busybox
    command: [sleep, "3600"]
    startupProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 2}
  - name: hung
    image: busybox
    command: [sleep, "3600"]
    readinessProbe: {exec: {command: [sleep, "5"]}, timeoutSeconds: 1, periodSeconds: 2}
"#,
    )?;
    let p = wait_pod(&node, "slow", "running", |p| TestNode::running(p, "slow"))?;
    let s = status_of(&p, "containerStatuses", "slow");
    assert_eq!(
        (s["started"].clone(), s["ready"].clone()),
        (false.into(), false.into()),
        "{s}"
    );
    let p = wait_pod(&node, "slow", "slow started and ready", |p| {
        status_of(p, "containerStatuses", "slow")["ready"] == true
    })?;
    assert_eq!(status_of(&p, "containerStatuses", "slow")["started"], true);
    assert_eq!(
        status_of(&p, "containerStatuses", "slow")["restartCount"],
        0,
        "liveness waited for the startup probe"
    );
    wait_pod(&node, "slow", "never restarted", |p| {
        status_of(p, "containerStatuses", "never")["restartCount"].as_i64() >= Some(1)
    })?;
    let events = describe(&node, "slow");
    for want in [
        "Container never failed startup probe, will be restarted",
        "Readiness probe failed: command \"sleep 5\" timed out",
    ] {
        assert!(events.contains(want), "{want:?} in {events}");
    }
    let p = pod(&node, "slow").context("pod")?;
    let hung = status_of(&p, "containerStatuses", "hung");
    assert_eq!(
        (hung["ready"].clone(), hung["restartCount"].clone()),
        (false.into(), 0.into())
    );
    node.kubectl_ok(&["delete", "pod", "slow"])?;
    node.settled()
}

#[test]
fn hooks_run_after_start_and_before_the_stop_signal() -> Result<()> {
    let node = api_node()?;
    let out = node.dir.join("hooks");
    std::fs::create_dir_all(&out)?;
    // napper runs as uid 1000.
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    std::fs::write(out.join("log"), "")?;
    std::fs::set_permissions(
        out.join("log"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    create(
        &node,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: out, hostPath: {{path: {out}, type: Directory}}}}]
  initContainers:
  - name: server
    image: busybox
    restartPolicy: Always
    command: [sh, -c, "mkdir -p /www/cgi-bin; printf '#!/bin/sh\necho $QUERY_STRING >> /out/log\nprintf \"Content-Type: text/plain\\r\\n\\r\\nok\"\n' > /www/cgi-bin/hook; chmod +x /www/cgi-bin/hook; httpd -p 8080 -h /www; trap 'exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    startupProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "trap 'echo term >> /out/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      postStart: {{httpGet: {{path: "/cgi-bin/hook?poststart-http", port: 8080}}}}
      preStop: {{exec: {{command: [sh, -c, "echo prestop-exec >> /out/log; sleep 2"]}}}}
  - name: napper
    image: busybox
    securityContext: {{runAsUser: 1000, runAsGroup: 3000, capabilities: {{add: [NET_ADMIN], drop: [CHOWN]}}}}
    command: [sh, -c, "trap 'echo napper-term >> /out/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "echo poststart-exec >> /out/log; readlink /proc/self/ns/pid > /out/pidns; grep memory /proc/self/cgroup > /out/cgroup; grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs)' /proc/self/status > /out/status"]}}}}
      preStop: {{sleep: {{seconds: 3}}}}
"#,
            out = out.display()
        ),
    )?;
    wait_pod(&node, "hooked", "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    let log = || std::fs::read_to_string(out.join("log")).unwrap_or_default();
    wait_for("both postStart hooks", T, || {
        let l = log();
        (l.contains("poststart-http") && l.contains("poststart-exec")).then_some(())
    })?;
    // The hook ran inside napper: its PID namespace and its (memory) cgroup.
    let p = pod(&node, "hooked").context("pod")?;
    let napper = node.container_pid(&p, "napper")?;
    let ns = std::fs::read_link(format!("/proc/{napper}/ns/pid"))?;
    let hook_ns = std::fs::read_to_string(out.join("pidns"))?;
    assert_eq!(hook_ns.trim(), ns.to_string_lossy());
    let own = std::fs::read_to_string(format!("/proc/{napper}/cgroup"))?;
    let memory = own
        .lines()
        .find(|l| l.contains("memory"))
        .unwrap_or_default();
    assert_eq!(std::fs::read_to_string(out.join("cgroup"))?.trim(), memory);
    // ... as napper's user, with napper's capabilities and no_new_privs.
    let wanted = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                [
                    "Uid:",
                    "Gid:",
                    "Groups:",
                    "CapInh:",
                    "CapPrm:",
                    "CapEff:",
                    "CapBnd:",
                    "CapAmb:",
                    "NoNewPrivs:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(str::to_owned)
            .collect()
    };
    let theirs = wanted(&std::fs::read_to_string(format!("/proc/{napper}/status"))?);
    assert_eq!(
        wanted(&std::fs::read_to_string(out.join("status"))?),
        theirs
    );
    assert!(
        theirs
            .iter()
            .any(|l| l.starts_with("Uid:") && l.contains("1000")),
        "{theirs:?}"
    );
    let deleted = Instant::now();
    node.kubectl_ok(&["delete", "pod", "hooked"])?;
    let lines: Vec<String> = log().lines().map(str::to_owned).collect();
    let at = |what: &str| lines.iter().position(|l| l == what);
    let (prestop, term, napper) = (at("prestop-exec"), at("term"), at("napper-term"));
    assert!(
        prestop.is_some() && term.is_some() && prestop < term,
        "preStop before TERM: {lines:?}"
    );
    assert!(napper.is_some(), "{lines:?}");
    // The sleep hook held napper's TERM back for its 3 s (well within the 20 s grace).
    ensure!(deleted.elapsed() >= Duration::from_secs(3), "{lines:?}");
    ensure!(
        deleted.elapsed() < Duration::from_secs(15),
        "the grace period was not used up"
    );
    node.settled()
}

#[test]
fn a_failed_post_start_hook_kills_the_container() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: badhook}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo cannot configure; exit 7"]}}
"#,
    )?;
    let p = wait_pod(&node, "badhook", "restarted", |p| {
        status_of(p, "containerStatuses", "app")["restartCount"].as_i64() >= Some(1)
    })?;
    let app = status_of(&p, "containerStatuses", "app");
    assert!(app["lastState"]["terminated"].is_object(), "{app}");
    let events = describe(&node, "badhook");
    assert!(events.contains("FailedPostStartHook"), "{events}");
    let p = wait_pod(&node, "badhook", "waiting with the hook's error", |p| {
        let w = &status_of(p, "containerStatuses", "app")["state"]["waiting"];
        w["reason"] == "PostStartHookError" || w["reason"] == "CrashLoopBackOff"
    })?;
    let w = &status_of(&p, "containerStatuses", "app")["state"]["waiting"];
    if w["reason"] == "PostStartHookError" {
        let message = w["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("exited with 7: cannot configure"),
            "{message}"
        );
    }
    node.kubectl_ok(&["delete", "pod", "badhook"])?;
    node.settled()
}

#[test]
fn termination_messages_come_from_the_file_or_the_log() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bye}
spec:
  restartPolicy: Never
  containers:
  - name: file
    image: busybox
    command: [sh, -c, "echo -n 'bye from the file' > /dev/termination-log; exit 3"]
  - name: custom
    image: busybox
    terminationMessagePath: /tmp/why
    command: [sh, -c, "echo -n done > /tmp/why"]
  - name: logs
    image: busybox
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "echo one; echo two; exit 1"]
"#,
    )?;
    let p = wait_pod(&node, "bye", "Failed", |p| p["status"]["phase"] == "Failed")?;
    let message =
        |c: &str| status_of(&p, "containerStatuses", c)["state"]["terminated"]["message"].clone();
    assert_eq!(message("file"), "bye from the file");
    assert_eq!(message("custom"), "done");
    assert_eq!(message("logs"), "one\ntwo\n");
    let described = describe(&node, "bye");
    assert!(described.contains("bye from the file"), "{described}");
    node.kubectl_ok(&["delete", "pod", "bye"])?;
    node.settled()
}

#[test]
fn an_agent_restart_changes_nothing_that_no_probe_asked_for() -> Result<()> {
    let mut node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: setup
    image: busybox
    command: [sh, -c, "echo ok > /tmp/x"]
  - name: side
    image: busybox
    restartPolicy: Always
    command: [sleep, "3600"]
    startupProbe: {exec: {command: ["true"]}, periodSeconds: 1}
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
    livenessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"#,
    )?;
    let ids = |p: &Value| -> Vec<Value> {
        ["initContainerStatuses", "containerStatuses"]
            .iter()
            .flat_map(|list| p["status"][list].as_array().cloned().unwrap_or_default())
            .map(|c| {
                serde_json::json!([
                    c["name"],
                    c["containerID"],
                    c["restartCount"],
                    c["ready"],
                    c["started"]
                ])
            })
            .collect()
    };
    let p = wait_pod(&node, "steady", "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    let before = ids(&p);
    for _ in 0..2 {
        node.stop_agent(Signal::SIGKILL)?;
        node.start_agent()?;
        node.wait_api()?;
        // Ready from the moment the restarted agent reports the pod, and every instance the same.
        let p = wait_pod(&node, "steady", "reported again", |p| {
            p["status"]["phase"] == "Running"
        })?;
        assert_eq!(condition(&p, "Ready"), "True", "{p:#}");
        assert_eq!(ids(&p), before);
    }
    std::thread::sleep(Duration::from_secs(3));
    let p = pod(&node, "steady").context("pod")?;
    assert_eq!(ids(&p), before, "probes after the restart changed nothing");
    node.kubectl_ok(&["delete", "pod", "steady"])?;
    node.settled()
}

#[test]
fn lifecycle_mistakes_are_refused_with_the_field_named() -> Result<()> {
    let node = api_node()?;
    for (spec, want) in [
        (
            "containers: [{name: a, image: busybox, livenessProbe: {exec: {command: [x]}, tcpSocket: {port: 1}}}]",
            "spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
        ),
        (
            "containers: [{name: a, image: busybox, readinessProbe: {httpGet: {port: web}}}]",
            "spec.containers[0].readinessProbe.httpGet.port",
        ),
        (
            "containers: [{name: a, image: busybox}], initContainers: [{name: s, image: busybox, restartPolicy: Never}]",
            "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\"",
        ),
        (
            "containers: [{name: a, image: busybox, livenessProbe: {exec: {command: [x]}, successThreshold: 2}}]",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
        ),
    ] {
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: bad}}\nspec: {{{spec}}}\n");
        let err = node.kubectl_create(&yaml, &[]).unwrap_err().to_string();
        assert!(err.contains(want), "{want:?} in {err}");
    }
    // The same from the manifest directory: nothing runs, and the agent says why.
    node.write_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: a, image: busybox, startupProbe: {grpc: {port: 0}}}]}\n",
    );
    wait_for("the manifest refused", T, || {
        node.agent_log()
            .contains("spec.containers[0].startupProbe.grpc.port")
            .then_some(())
    })?;
    assert!(node.pod("bad").is_none());
    node.remove_manifest("bad.yaml");
    node.settled()
}

#[test]
fn grpc_probes_speak_the_standard_health_protocol() -> Result<()> {
    let node = api_node()?;
    let image = nodelet_tests::test_images().join("grpc-health");
    let out = node.nodelet(&["image", "import", &image.display().to_string()]);
    ensure!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: grpc}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: grpc-health
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/serving; exec grpc-health 9090"]
    readinessProbe: {grpc: {port: 9090}, periodSeconds: 1}
    livenessProbe: {grpc: {port: 9090, service: nodelet}, periodSeconds: 1, failureThreshold: 30}
  - name: wrong
    image: grpc-health
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/serving; exec grpc-health 9091"]
    livenessProbe: {grpc: {port: 9091, service: elsewhere}, periodSeconds: 1, failureThreshold: 2}
"#,
    )?;
    wait_pod(&node, "grpc", "server ready", |p| {
        status_of(p, "containerStatuses", "server")["ready"] == true
    })?;
    node.kubectl_ok(&["exec", "grpc", "-c", "server", "--", "rm", "/tmp/serving"])?;
    let p = wait_pod(&node, "grpc", "server unready", |p| {
        status_of(p, "containerStatuses", "server")["ready"] == false
    })?;
    assert_eq!(
        status_of(&p, "containerStatuses", "server")["restartCount"],
        0
    );
    wait_pod(&node, "grpc", "wrong restarted", |p| {
        status_of(p, "containerStatuses", "wrong")["restartCount"].as_i64() >= Some(1)
    })?;
    let events = describe(&node, "grpc");
    for want in [
        "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")",
        "Liveness probe failed: error: health rpc probe failed: rpc error: code = NotFound desc = unknown service",
    ] {
        assert!(events.contains(want), "{want:?} in:\n{events}");
    }
    node.kubectl_ok(&["delete", "pod", "grpc"])?;
    node.settled()
}

#[test]
fn static_pods_run_init_containers_and_pre_stop_hooks_and_nodelet_pods_agrees_with_kubectl(
) -> Result<()> {
    let node = api_node()?;
    let out = node.dir.join("static-hooks");
    std::fs::create_dir_all(&out)?;
    node.write_manifest(
        "ordered.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: ordered}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: out, hostPath: {{path: {out}, type: Directory}}}}]
  initContainers:
  - {{name: wait, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, "3"]}}
  containers:
  - name: app
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "trap 'echo term >> /out/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, "echo prestop >> /out/log"]}}}}
"#,
            out = out.display()
        ),
    );
    let name = format!("ordered-{}", node.name);
    // `nodelet pods` and kubectl (the mirror pod) print the same STATUS.
    let nodelet_status = || {
        let out = node.nodelet(&["pods"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name.as_str()))
            .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .unwrap_or_default()
    };
    wait_for("nodelet pods: Init:0/1", T, || {
        (nodelet_status() == "Init:0/1").then_some(())
    })?;
    let mut seen = BTreeSet::new();
    wait_status(&node, &name, "Running", &mut seen)?;
    assert!(seen.contains("Init:0/1"), "kubectl saw {seen:?}");
    wait_for("nodelet pods: Running", T, || {
        (nodelet_status() == "Running").then_some(())
    })?;
    node.remove_manifest("ordered.yaml");
    node.wait_gone("ordered", T)?;
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    assert_eq!(log, "prestop\nterm\n");
    node.settled()
}

#[test]
fn a_lost_sandbox_runs_the_init_containers_again() -> Result<()> {
    let node = api_node()?;
    let out = node.dir.join("init-runs");
    std::fs::create_dir_all(&out)?;
    create(
        &node,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: again}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: out, hostPath: {{path: {out}, type: Directory}}}}]
  initContainers:
  - name: count
    image: busybox
    command: [sh, -c, "echo run >> /out/runs"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
"#,
            out = out.display()
        ),
    )?;
    let p = wait_pod(&node, "again", "running", |p| TestNode::running(p, "app"))?;
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    // The pod's shim (and with it the sandbox) dies.
    let shim = node
        .processes()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("nodelet-shim") && cmdline.contains(&uid)
        })
        .context("the pod's shim")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL)?;
    let p = wait_pod(&node, "again", "running in a new sandbox", |p| {
        TestNode::running(p, "app") && status_of(p, "containerStatuses", "app")["restartCount"] == 1
    })?;
    let count = status_of(&p, "initContainerStatuses", "count");
    assert_eq!(count["restartCount"], 1, "{count}");
    assert_eq!(count["state"]["terminated"]["reason"], "Completed");
    assert_eq!(std::fs::read_to_string(out.join("runs"))?, "run\nrun\n");
    assert_eq!(condition(&p, "Initialized"), "True");
    node.kubectl_ok(&["delete", "pod", "again"])?;
    node.settled()
}

/// `activeDeadlineSeconds`: once the pod has been active that long, kubelet fails it
/// (`DeadlineExceeded`, with its message and a Warning event), stops its containers with their
/// grace period and starts none again, whatever the restart policy.
#[test]
fn a_pod_past_its_active_deadline_is_failed_and_stopped() -> Result<()> {
    let node = api_node()?;
    create(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bounded}
spec:
  activeDeadlineSeconds: 3
  terminationGracePeriodSeconds: 2
  restartPolicy: Always
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'trap "exit 7" TERM; sleep 3600 & wait']
"#,
    )?;
    wait_pod(&node, "bounded", "running", |p| TestNode::running(p, "app"))?;
    let p = wait_pod(&node, "bounded", "failed past its deadline", |p| {
        p["status"]["phase"] == "Failed"
            && status_of(p, "containerStatuses", "app")["state"]["terminated"].is_object()
    })?;
    assert_eq!(p["status"]["reason"], "DeadlineExceeded", "{}", p["status"]);
    assert_eq!(
        p["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    let app = status_of(&p, "containerStatuses", "app");
    assert_eq!(
        app["state"]["terminated"]["exitCode"], 7,
        "stopped with TERM: {app}"
    );
    assert_eq!(app["restartCount"], 0);
    assert!(describe(&node, "bounded").contains("DeadlineExceeded"));
    // And it stays so.
    std::thread::sleep(Duration::from_secs(3));
    let p = pod(&node, "bounded").context("pod")?;
    assert_eq!(status_of(&p, "containerStatuses", "app")["restartCount"], 0);
    assert_eq!(p["status"]["phase"], "Failed");
    node.kubectl_ok(&["delete", "pod", "bounded"])?;
    node.settled()
}
