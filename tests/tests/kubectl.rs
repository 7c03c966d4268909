//! The stock kubectl against nodelet's built-in Kubernetes API, in a test node: the walkthrough
//! of the issue, command by command, checking output and exit codes.

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{describe_output, wait_for, Registry, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    describe_output(out)
}

/// Runs kubectl and requires success; returns stdout.
fn ok(node: &TestNode, args: &[&str]) -> Result<String> {
    node.kubectl_ok(args)
}

/// Runs kubectl and requires failure; returns stderr.
fn fails(node: &TestNode, args: &[&str]) -> Result<String> {
    let out = node.kubectl(args);
    ensure!(
        !out.status.success(),
        "kubectl {} should fail: {}",
        args.join(" "),
        text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(node: &TestNode, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&ok(node, &all)?)?)
}

fn wait_phase(node: &TestNode, pod: &str, phase: &str) -> Result<Value> {
    wait_for(&format!("pod {pod} {phase}"), T, || {
        let p = json(node, &["get", "pod", pod]).ok()?;
        (p["status"]["phase"] == phase).then_some(p)
    })
    .with_context(|| {
        format!(
            "{}\nagent log:\n{}",
            text(&node.kubectl(&["describe", "pod", pod])),
            node.agent_log()
        )
    })
}

/// A pod of busybox containers that sleep, from the images on the node.
fn pod_yaml(name: &str, labels: &str, containers: &[&str], extra_spec: &str) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n"
    );
    for c in containers {
        yaml.push_str(&format!(
            "  - name: {c}\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
        ));
    }
    yaml
}

fn create(node: &TestNode, yaml: &str, extra: &[&str]) -> Result<String> {
    node.kubectl_create(yaml, extra)
}

fn pod_names(node: &TestNode, args: &[&str]) -> Result<Vec<String>> {
    let mut all = vec!["get", "pods"];
    all.extend(args);
    Ok(names(&ok(node, &all)?))
}

/// The text with every run of spaces made one, so columns can be matched.
fn squeeze(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names in the first column of a table, header skipped.
fn names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_get_describe_delete() -> Result<()> {
    let mut node = TestNode::with_config("node1", "")?;
    let registry = Registry::start(&node, 5000)?;
    registry.push(&node, "kubia", "luksa/kubia", "latest")?;
    node.start_agent()?;
    node.wait_api()?;
    let image = format!("--image={}/luksa/kubia", registry.address);

    // run, get, get -o wide
    let out = ok(&node, &["run", "kubia", &image, "--port=8080"])?;
    ensure!(out.trim() == "pod/kubia created", "{out}");
    let again = fails(&node, &["run", "kubia", &image])?;
    ensure!(
        again.contains("Error from server (AlreadyExists): pods \"kubia\" already exists"),
        "{again}"
    );
    let pod = wait_phase(&node, "kubia", "Running")?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(ip.starts_with("10.244."), "pod IP {ip}");
    let table = ok(&node, &["get", "pods"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    ensure!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("kubia") && l.contains("1/1") && l.contains("Running")),
        "{table}"
    );
    let wide = ok(&node, &["get", "pods", "-o", "wide"])?;
    ensure!(
        wide.contains(&ip) && wide.contains("node1") && wide.contains("NOMINATED NODE"),
        "{wide}"
    );

    // describe, yaml, json
    let describe = squeeze(&ok(&node, &["describe", "pod", "kubia"])?);
    for want in [
        "Name: kubia",
        "Node: node1",
        "Status: Running",
        &format!("IP: {ip}"),
        "Ready True",
        "Normal Scheduled",
        "default-scheduler Successfully assigned default/kubia to node1",
    ] {
        ensure!(
            describe.contains(want),
            "describe lacks {want:?}:\n{describe}"
        );
    }
    let yaml = ok(&node, &["get", "po", "kubia", "-o", "yaml"])?;
    ensure!(
        yaml.contains("kind: Pod")
            && yaml.contains("nodeName: node1")
            && yaml.contains("terminationGracePeriodSeconds: 30"),
        "{yaml}"
    );

    // the pod answers on its IP
    let hit = node
        .net_command("curl")
        .args(["-s", "-m", "5", &format!("http://{ip}:8080/")])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&hit.stdout).contains("You've hit kubia"),
        "{}",
        text(&hit)
    );
    // and logs as the tutorial's image does: a line at start, one per request
    let logs = ok(&node, &["logs", "kubia"])?;
    ensure!(
        logs.starts_with("Kubia server starting...\n") && logs.contains("Received request from "),
        "{logs}"
    );

    // get nodes
    let nodes = ok(&node, &["get", "nodes"])?;
    ensure!(
        nodes
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("node1") && l.contains("Ready")),
        "{nodes}"
    );

    // delete waits until the pod is gone
    let out = ok(&node, &["delete", "pod", "kubia", "--grace-period=1"])?;
    ensure!(out.trim() == "pod \"kubia\" deleted", "{out}");
    let gone = fails(&node, &["get", "pod", "kubia"])?;
    ensure!(
        gone.contains("Error from server (NotFound): pods \"kubia\" not found"),
        "{gone}"
    );
    wait_for("the pod's sandbox to go", T, || {
        node.pods().ok().filter(|p| p.is_empty())
    })?;
    Ok(())
}

#[test]
fn labels_selectors_annotations_and_deletes() -> Result<()> {
    let node = TestNode::with_api()?;
    let two = pod_yaml(
        "kubia-manual",
        "creation_method: manual, env: prod",
        &["main", "side"],
        "",
    );
    ensure!(create(&node, &two, &[])? == "pod/kubia-manual created");
    create(
        &node,
        &pod_yaml("b", "creation_method: auto, env: devel", &["c"], ""),
        &[],
    )?;
    create(&node, &pod_yaml("c", "run: c", &["c"], ""), &[])?;
    let p = wait_phase(&node, "kubia-manual", "Running")?;
    ensure!(
        p["status"]["containerStatuses"].as_array().map(Vec::len) == Some(2),
        "{p:#}"
    );
    wait_for("2/2 ready", T, || {
        ok(&node, &["get", "po", "kubia-manual"])
            .ok()
            .filter(|t| t.contains("2/2"))
    })?;

    let labels = ok(&node, &["get", "po", "--show-labels"])?;
    ensure!(
        labels.lines().next().is_some_and(|h| h.ends_with("LABELS")),
        "{labels}"
    );
    ensure!(
        labels.contains("creation_method=manual,env=prod"),
        "{labels}"
    );
    let columns = ok(&node, &["get", "po", "-L", "creation_method,env"])?;
    ensure!(
        squeeze(&columns).lines().next()
            == Some("NAME READY STATUS RESTARTS AGE CREATION_METHOD ENV"),
        "{columns}"
    );
    ensure!(
        squeeze(&columns)
            .lines()
            .any(|l| l.starts_with("b ") && l.ends_with(" auto devel")),
        "{columns}"
    );

    ensure!(ok(&node, &["label", "po", "c", "creation_method=manual"])?.trim() == "pod/c labeled");
    let refused = fails(&node, &["label", "po", "kubia-manual", "creation_method=x"])?;
    ensure!(
        refused.contains("already has a value (manual)"),
        "{refused}"
    );
    ok(
        &node,
        &[
            "label",
            "po",
            "kubia-manual",
            "creation_method=x",
            "--overwrite",
        ],
    )?;

    for (selector, want) in [
        ("creation_method=manual", vec!["c"]),
        ("creation_method==x", vec!["kubia-manual"]),
        ("env", vec!["b", "kubia-manual"]),
        ("!env", vec!["c"]),
        ("env in (prod,devel)", vec!["b", "kubia-manual"]),
        ("env notin (prod)", vec!["b", "c"]),
        ("creation_method!=auto", vec!["c", "kubia-manual"]),
        ("env,creation_method=x", vec!["kubia-manual"]),
    ] {
        let got = pod_names(&node, &["-l", selector])?;
        ensure!(got == want, "-l {selector}: {got:?}, want {want:?}");
    }
    let none = node.kubectl(&["get", "po", "-l", "env=nothing"]);
    ensure!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found in default namespace."),
        "{}",
        text(&none)
    );
    let bad = fails(&node, &["get", "po", "-l", "env in prod"])?;
    ensure!(
        bad.contains("unable to parse requirement") || bad.contains("unable to parse"),
        "{bad}"
    );

    ensure!(
        ok(
            &node,
            &[
                "annotate",
                "pod",
                "kubia-manual",
                "mycompany.com/someannotation=foo bar"
            ]
        )?
        .trim()
            == "pod/kubia-manual annotated"
    );
    let yaml = ok(&node, &["get", "po", "kubia-manual", "-o", "yaml"])?;
    ensure!(
        yaml.contains("mycompany.com/someannotation: foo bar"),
        "{yaml}"
    );

    let out = ok(&node, &["delete", "po", "-l", "creation_method=manual"])?;
    ensure!(out.trim() == "pod \"c\" deleted", "{out}");
    ensure!(pod_names(&node, &[])? == ["b", "kubia-manual"]);
    let out = ok(&node, &["delete", "po", "--all"])?;
    ensure!(out.lines().count() == 2, "{out}");
    let empty = node.kubectl(&["get", "pods"]);
    ensure!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found in default namespace."),
        "{}",
        text(&empty)
    );
    wait_for("the node's pods to go", T, || {
        node.pods().ok().filter(|p| p.is_empty())
    })?;
    Ok(())
}

#[test]
fn namespaces() -> Result<()> {
    let node = TestNode::with_api()?;
    let ns = squeeze(&ok(&node, &["get", "ns"])?);
    for want in [
        "default Active",
        "kube-node-lease Active",
        "kube-public Active",
        "kube-system Active",
    ] {
        ensure!(ns.contains(want), "{ns}");
    }
    // kubectl 1.32+ sends this one as protobuf.
    ensure!(ok(&node, &["create", "namespace", "custom"])?.trim() == "namespace/custom created");
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: custom2\n";
    ensure!(create(&node, manifest, &[])? == "namespace/custom2 created");
    let made: Value = json(&node, &["get", "ns", "custom"])?;
    ensure!(
        made["spec"]["finalizers"] == serde_json::json!(["kubernetes"]),
        "{made:#}"
    );
    ensure!(
        made["metadata"]["labels"]["kubernetes.io/metadata.name"] == "custom",
        "{made:#}"
    );

    create(
        &node,
        &pod_yaml("inside", "app: x", &["c"], ""),
        &["--namespace", "custom"],
    )?;
    wait_for("the pod in custom to run", T, || {
        ok(&node, &["get", "po", "--namespace", "custom"])
            .ok()
            .filter(|t| t.contains("Running"))
    })?;
    ensure!(pod_names(&node, &["-n", "custom"])? == ["inside"]);
    let empty = node.kubectl(&["get", "po"]);
    ensure!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found in default namespace."),
        "{}",
        text(&empty)
    );

    let denied = fails(&node, &["delete", "ns", "default"])?;
    ensure!(denied.contains("Forbidden"), "{denied}");
    let out = ok(&node, &["delete", "ns", "custom"])?;
    ensure!(out.trim() == "namespace \"custom\" deleted", "{out}");
    let gone = fails(&node, &["get", "ns", "custom"])?;
    ensure!(gone.contains("NotFound"), "{gone}");
    let second = node.kubectl_with(
        "kubectl",
        &["create", "-f", "-", "-n", "custom2"],
        Some(&pod_yaml("x", "a: b", &["c"], "")),
    );
    ensure!(second.status.success(), "{}", text(&second));
    ok(&node, &["delete", "ns", "custom2"])?;
    wait_for("the node's pods to go", T, || {
        node.pods().ok().filter(|p| p.is_empty())
    })?;
    Ok(())
}

#[test]
fn node_selector_waits_for_a_label() -> Result<()> {
    let mut node = TestNode::with_config("node1", "nodeLabels:\n  disk: ssd\n")?;
    node.start_agent()?;
    node.wait_api()?;
    let labels = ok(&node, &["get", "nodes", "--show-labels"])?;
    for want in [
        "disk=ssd",
        "kubernetes.io/hostname=node1",
        "kubernetes.io/os=linux",
    ] {
        ensure!(labels.contains(want), "{labels}");
    }
    let wide = squeeze(&ok(&node, &["get", "nodes", "-o", "wide"])?);
    ensure!(
        wide.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("node1 Ready <none>")),
        "{wide}"
    );
    let n = json(&node, &["get", "node", "node1"])?;
    ensure!(
        n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250,
        "{n:#}"
    );
    ensure!(n["spec"]["podCIDR"] == "10.244.0.0/24", "{n:#}");
    ensure!(n["status"]["capacity"]["pods"] == "110", "{n:#}");
    let lease = json(&node, &["get", "lease", "node1", "-n", "kube-node-lease"])?;
    ensure!(lease["spec"]["holderIdentity"] == "node1", "{lease:#}");

    create(
        &node,
        &pod_yaml(
            "gpu",
            "a: b",
            &["c"],
            "  nodeSelector:\n    gpu: \"true\"\n",
        ),
        &[],
    )?;
    let pod = wait_for("FailedScheduling", T, || {
        let p = json(&node, &["get", "pod", "gpu"]).ok()?;
        let conditions = p["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
            .then_some(p)
    })?;
    ensure!(
        pod["status"]["phase"] == "Pending" && pod["spec"]["nodeName"].is_null(),
        "{pod:#}"
    );
    let describe = squeeze(&ok(&node, &["describe", "pod", "gpu"])?);
    ensure!(describe.contains("Warning FailedScheduling"), "{describe}");
    ensure!(
        describe.contains("didn't match Pod's node affinity/selector"),
        "{describe}"
    );
    let none = node.kubectl(&["get", "nodes", "-l", "gpu=true"]);
    ensure!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found"),
        "{}",
        text(&none)
    );

    ensure!(ok(&node, &["label", "node", "node1", "gpu=true"])?.trim() == "node/node1 labeled");
    ensure!(names(&ok(&node, &["get", "nodes", "-l", "gpu=true"])?) == ["node1"]);
    let running = wait_phase(&node, "gpu", "Running")?;
    ensure!(running["spec"]["nodeName"] == "node1");
    let events = squeeze(&ok(&node, &["describe", "pod", "gpu"])?);
    for want in [
        "Normal Scheduled",
        "Normal Pulled",
        "Normal Created",
        "Normal Started",
    ] {
        ensure!(events.contains(want), "lacks {want}: {events}");
    }
    ok(&node, &["delete", "pod", "gpu"])?;
    Ok(())
}

#[test]
fn watch_sees_the_phases() -> Result<()> {
    let node = TestNode::with_api()?;
    let home = node.dir.join("home");
    let mut watcher = node
        .net_command("kubectl")
        .env("HOME", &home)
        .arg("--kubeconfig")
        .arg(node.kubeconfig())
        .args(["get", "pods", "-w"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(node.dir.join("watch.out"))?)
        .stderr(std::fs::File::create(node.dir.join("watch.err"))?)
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    create(&node, &pod_yaml("w", "a: b", &["c"], ""), &[])?;
    wait_phase(&node, "w", "Running")?;
    ok(&node, &["delete", "pod", "w", "--wait=false"])?;
    let seen = wait_for("the watch to see the pod go", T, || {
        let out = std::fs::read_to_string(node.dir.join("watch.out")).ok()?;
        out.contains("Terminating").then_some(out)
    });
    watcher.kill()?;
    watcher.wait()?;
    let seen = seen?;
    let statuses: Vec<String> = squeeze(&seen)
        .lines()
        .filter_map(|l| l.split(' ').nth(2).map(str::to_owned))
        .collect();
    ensure!(
        squeeze(&seen).lines().next() == Some("NAME READY STATUS RESTARTS AGE"),
        "{seen}"
    );
    for want in ["Pending", "Running", "Terminating"] {
        ensure!(
            statuses.iter().any(|s| s == want),
            "watch lacks {want}: {seen}"
        );
    }
    Ok(())
}

#[test]
fn core_commands_with_kubectl_127_130_132_133() -> Result<()> {
    let node = TestNode::with_api()?;
    for version in ["1.27", "1.30", "1.32", "1.33"] {
        let bin = format!("kubectl.{version}");
        let k = |args: &[&str]| -> Result<String> {
            let out = node.kubectl_with(&bin, args, None);
            ensure!(
                out.status.success(),
                "{bin} {}: {}",
                args.join(" "),
                text(&out)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let pod = format!("p{}", version.replace('.', ""));
        let ns = format!("ns{}", version.replace('.', ""));
        k(&[
            "run",
            &pod,
            "--image=busybox",
            "--image-pull-policy=IfNotPresent",
            "--labels=v=x",
            "--",
            "sleep",
            "3600",
        ])?;
        wait_for(&format!("{bin}: {pod} running"), T, || {
            k(&["get", "pods", &pod])
                .ok()
                .filter(|t| squeeze(t).contains(&format!("{pod} 1/1 Running")))
        })?;
        let wide = k(&["get", "pods", "-o", "wide"])?;
        ensure!(
            wide.contains("node1") && wide.contains("10.244.0."),
            "{bin}: {wide}"
        );
        k(&["label", "pod", &pod, "extra=yes"])?;
        ensure!(
            names(&k(&["get", "pods", "-l", "extra=yes,v in (x)"])?) == [pod.clone()],
            "{bin}: selector"
        );
        ensure!(
            k(&["create", "namespace", &ns])?.trim() == format!("namespace/{ns} created"),
            "{bin}: create namespace"
        );
        ensure!(squeeze(&k(&["get", "ns", &ns])?).contains(&format!("{ns} Active")));
        k(&["delete", "pod", &pod, "--grace-period=1"])?;
        k(&["delete", "namespace", &ns])?;
        let left = node.kubectl_with(&bin, &["get", "pod", &pod], None);
        ensure!(
            String::from_utf8_lossy(&left.stderr).contains("NotFound"),
            "{bin}: {}",
            text(&left)
        );
    }
    Ok(())
}

#[test]
fn agent_restart_loses_nothing() -> Result<()> {
    let mut node = TestNode::with_api()?;
    create(&node, &pod_yaml("a", "keep: me", &["c"], ""), &[])?;
    wait_phase(&node, "a", "Running")?;
    let rv = |node: &TestNode| -> Result<u64> {
        let list: Value = serde_json::from_str(&ok(
            node,
            &["get", "--raw", "/api/v1/namespaces/default/pods"],
        )?)?;
        Ok(list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .parse()?)
    };
    let before = rv(&node)?;
    let uid = json(&node, &["get", "pod", "a"])?["metadata"]["uid"].clone();

    node.stop_agent(nix::sys::signal::Signal::SIGTERM)?;
    node.start_agent()?;
    node.wait_api()?;
    let after = json(&node, &["get", "pod", "a"])?;
    ensure!(
        after["metadata"]["uid"] == uid && after["metadata"]["labels"]["keep"] == "me",
        "{after:#}"
    );
    ensure!(after["status"]["phase"] == "Running", "{after:#}");
    ensure!(rv(&node)? > before, "resourceVersion went back");
    // The agent's watch resumed: new pods run, deletions finish.
    create(&node, &pod_yaml("b", "x: z", &["c"], ""), &[])?;
    wait_phase(&node, "b", "Running")?;
    ok(&node, &["delete", "pod", "a", "b"])?;
    wait_for("the node's pods to go", T, || {
        node.pods().ok().filter(|p| p.is_empty())
    })?;
    // A watch from before the restart's history window is told to list again.
    let old = node.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1",
    ]);
    ensure!(
        String::from_utf8_lossy(&old.stderr).contains("410")
            || String::from_utf8_lossy(&old.stderr).contains("too old"),
        "{}",
        text(&old)
    );
    Ok(())
}

/// A request to the built-in API: the status code and the body (JSON when it is).
fn curl(node: &TestNode, auth: bool, args: &[&str]) -> Result<(u16, Value)> {
    let out = node
        .api_curl(auth)?
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    ))
}

#[test]
fn bad_requests_get_status_errors() -> Result<()> {
    let node = TestNode::with_api()?;
    let pods = "https://127.0.0.1:6443/api/v1/namespaces/default/pods";
    let (code, _) = curl(&node, false, &[pods])?;
    ensure!(code == 401, "no credentials: {code}");
    let token = std::fs::read_to_string(node.dir.join("root/pki/token"))?;
    let (code, _) = curl(
        &node,
        false,
        &[
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            pods,
        ],
    )?;
    ensure!(code == 200, "token: {code}");
    let (code, _) = curl(&node, false, &["-H", "Authorization: Bearer wrong", pods])?;
    ensure!(code == 401, "wrong token: {code}");

    let post = |body: &str, content_type: &str, query: &str| {
        curl(
            &node,
            true,
            &[
                "-X",
                "POST",
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                body,
                &format!("{pods}{query}"),
            ],
        )
    };
    let (code, status) = post("{nope", "application/json", "")?;
    ensure!(
        code == 400 && status["reason"] == "BadRequest" && status["kind"] == "Status",
        "{code} {status}"
    );
    let (code, status) = post("{}", "text/plain", "")?;
    ensure!(
        code == 415 && status["reason"] == "UnsupportedMediaType",
        "{code} {status}"
    );
    let unknown = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"u"},"spec":{"containers":[{"name":"c","image":"busybox","bogus":1}]}}"#;
    let (code, status) = post(unknown, "application/json", "?fieldValidation=Strict")?;
    ensure!(
        code == 400
            && status["message"]
                .as_str()
                .unwrap_or_default()
                .contains(r#"unknown field "spec.containers[0].bogus""#),
        "{code} {status}"
    );
    let (code, status) = post(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"n"},"spec":{"containers":[{"name":"c"}]}}"#,
        "application/json",
        "",
    )?;
    ensure!(
        code == 422 && status["reason"] == "Invalid",
        "{code} {status}"
    );
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4 << 20));
    std::fs::write(node.dir.join("big.json"), big)?;
    let (code, status) = curl(
        &node,
        true,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", node.dir.join("big.json").display()),
            pods,
        ],
    )?;
    ensure!(code == 413, "{code} {status}");
    let (code, status) = curl(&node, true, &[&format!("{pods}?labelSelector=a%20in%20b")])?;
    ensure!(code == 400, "{code} {status}");
    let (code, status) = curl(
        &node,
        true,
        &[&format!("{pods}?fieldSelector=spec.bogus%3Dx")],
    )?;
    ensure!(
        code == 400 && status["message"] == "field label not supported: spec.bogus",
        "{code} {status}"
    );
    let (code, _) = curl(&node, true, &["https://127.0.0.1:6443/api/v1/widgets"])?;
    ensure!(code == 404, "{code}");

    // kubectl shows the server's reasons.
    let strict = node.kubectl_with("kubectl", &["create", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec:\n  containers:\n  - {name: c, image: busybox, imagePolicy: x}\n"));
    ensure!(
        !strict.status.success()
            && String::from_utf8_lossy(&strict.stderr)
                .contains(r#"unknown field "spec.containers[0].imagePolicy""#),
        "{}",
        text(&strict)
    );
    let invalid = node.kubectl_with(
        "kubectl",
        &["create", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec:\n  containers:\n  - {name: c}\n",
        ),
    );
    ensure!(
        String::from_utf8_lossy(&invalid.stderr)
            .contains("The Pod \"s\" is invalid: spec.containers[0].image: Required value"),
        "{}",
        text(&invalid)
    );
    let missing = fails(&node, &["get", "pod", "nosuch"])?;
    ensure!(
        missing.contains("Error from server (NotFound): pods \"nosuch\" not found"),
        "{missing}"
    );
    // Still serving.
    ok(&node, &["get", "ns"])?;
    Ok(())
}

/// Services: the API's own `kubernetes` Service (at the address pods reach the API), listed as
/// kubectl lists Services; `cluster-info` works; a Service of one's own is refused, saying why.
#[test]
fn services_are_the_apis_own_and_cluster_info_works() -> Result<()> {
    let node = TestNode::with_api()?;
    let all = wait_for("the kubernetes Service", Duration::from_secs(20), || {
        ok(&node, &["get", "svc", "-A", "--no-headers"])
            .ok()
            .filter(|o| o.contains("kubernetes"))
    })?;
    let row: Vec<&str> = all
        .lines()
        .find(|l| l.contains("kubernetes"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    ensure!(
        row.len() >= 6 && row[0] == "default" && row[2] == "ClusterIP" && row[5].ends_with("/TCP"),
        "{all}"
    );
    let svc: Value =
        serde_json::from_str(&ok(&node, &["get", "svc", "kubernetes", "-o", "json"])?)?;
    ensure!(
        svc["metadata"]["labels"]["component"] == "apiserver"
            && svc["spec"]["ports"][0]["name"] == "https",
        "{svc:#}"
    );
    let info = ok(&node, &["cluster-info"])?;
    ensure!(
        info.contains("Kubernetes control plane is running at https://"),
        "{info}"
    );
    let refused = fails(
        &node,
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
    )?;
    ensure!(
        refused.contains("is forbidden") && refused.contains("no service proxy"),
        "{refused}"
    );
    let kept = fails(&node, &["delete", "svc", "kubernetes"])?;
    ensure!(kept.contains("is forbidden"), "{kept}");
    Ok(())
}

/// `kubectl explain` reads the API's OpenAPI v3 schemas: fields, their types and descriptions,
/// down nested types, and `--recursive`.
#[test]
fn kubectl_explain_reads_the_schemas() -> Result<()> {
    let node = TestNode::with_api()?;
    let containers = ok(&node, &["explain", "pods.spec.containers"])?;
    ensure!(
        containers.contains("KIND:       Pod")
            && containers.contains("FIELD: containers <[]Container>")
            && containers
                .lines()
                .any(|l| l.trim_start().starts_with("image") && l.contains("<string>")),
        "{containers}"
    );
    ensure!(containers.contains("Container image name"), "{containers}");
    let probe = ok(
        &node,
        &["explain", "pod.spec.containers.livenessProbe.httpGet.port"],
    )?;
    ensure!(probe.contains("IntOrString"), "{probe}");
    let lease = ok(&node, &["explain", "leases.spec.holderIdentity"])?;
    ensure!(lease.contains("GROUP:      coordination.k8s.io"), "{lease}");
    let recursive = ok(&node, &["explain", "configmap", "--recursive"])?;
    ensure!(
        recursive.contains("binaryData") && recursive.contains("immutable"),
        "{recursive}"
    );
    let missing = fails(&node, &["explain", "pods.spec.nosuch"])?;
    ensure!(missing.contains("nosuch"), "{missing}");
    Ok(())
}

#[test]
fn create_a_list_and_patch_every_way() -> Result<()> {
    let node = TestNode::with_api()?;
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: l1}, spec: {nodeName: ghost, containers: [{name: c, image: busybox}]}}\n- {apiVersion: v1, kind: Pod, metadata: {name: l2}, spec: {nodeName: ghost, containers: [{name: c, image: busybox}]}}\n";
    // kubectl validates a List's items client-side, against the API's OpenAPI schemas.
    let out = create(&node, list, &[])?;
    ensure!(out == "pod/l1 created\npod/l2 created", "{out}");
    let docs = "apiVersion: v1\nkind: Pod\nmetadata: {name: d1}\nspec: {nodeName: ghost, containers: [{name: c, image: busybox}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: d2}\nspec: {nodeName: ghost, containers: [{name: c, image: busybox}]}\n";
    ensure!(create(&node, docs, &[])? == "pod/d1 created\npod/d2 created");
    ok(
        &node,
        &[
            "patch",
            "pod",
            "l1",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ],
    )?;
    ok(
        &node,
        &[
            "patch",
            "pod",
            "l1",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
        ],
    )?;
    ok(
        &node,
        &[
            "patch",
            "pod",
            "l1",
            "-p",
            r#"{"metadata":{"labels":{"s":"3"}}}"#,
        ],
    )?;
    let labels = json(&node, &["get", "pod", "l1"])?["metadata"]["labels"].clone();
    ensure!(
        labels == serde_json::json!({"m": "1", "j": "2", "s": "3"}),
        "{labels}"
    );
    let refused = fails(
        &node,
        &[
            "patch",
            "pod",
            "l1",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/nope"}]"#,
        ],
    )?;
    ensure!(
        refused.contains("Invalid") || refused.contains("invalid"),
        "{refused}"
    );
    let immutable = fails(
        &node,
        &[
            "patch",
            "pod",
            "l1",
            "-p",
            r#"{"spec":{"restartPolicy":"Never"}}"#,
        ],
    )?;
    ensure!(
        immutable.contains("pod updates may not change fields other than"),
        "{immutable}"
    );
    // `nodelet kubectl` uses the node's kubeconfig.
    let out = node
        .command(nodelet_tests::nodelet_bin())
        .arg("--config")
        .arg(node.config())
        .args(["kubectl", "get", "pods", "-o", "name"])
        .env("HOME", node.dir.join("home"))
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "pod/d1\npod/d2\npod/l1\npod/l2\n",
        "{}",
        text(&out)
    );
    ok(
        &node,
        &["delete", "pods", "--all", "--force", "--grace-period=0"],
    )?;
    Ok(())
}

#[test]
fn stored_pods_carry_no_fields_they_were_not_given() -> Result<()> {
    let node = TestNode::with_api()?;
    create(&node, "apiVersion: v1\nkind: Pod\nmetadata: {name: lean}\nspec: {nodeName: ghost, containers: [{name: c, image: busybox}]}\n", &[])?;
    let raw = ok(
        &node,
        &["get", "--raw", "/api/v1/namespaces/default/pods/lean"],
    )?;
    ensure!(!raw.contains(":null"), "{raw}");
    Ok(())
}

/// `dryRun=All` admits without storing; a WatchList (`sendInitialEvents`) ends its initial
/// events with the bookmark kube-rs and client-go wait for.
#[test]
fn dry_run_and_watch_list_bookmark() -> Result<()> {
    let node = TestNode::with_api()?;
    let pods = "https://127.0.0.1:6443/api/v1/namespaces/default/pods";
    let body = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"dry"},"spec":{"nodeName":"ghost","containers":[{"name":"c","image":"busybox"}]}}"#;
    let (code, created) = curl(
        &node,
        true,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("{pods}?dryRun=All"),
        ],
    )?;
    ensure!(
        code == 201 && created["spec"]["terminationGracePeriodSeconds"] == 30,
        "{code} {created}"
    );
    let gone = fails(&node, &["get", "pod", "dry"])?;
    ensure!(gone.contains("NotFound"), "{gone}");

    create(&node, "apiVersion: v1\nkind: Pod\nmetadata: {name: w1}\nspec: {nodeName: ghost, containers: [{name: c, image: busybox}]}\n", &[])?;
    let out = node
        .api_curl(true)?
        .args(["-N", "-m", "2", &format!("{pods}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")])
        .output()?;
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        events
            .first()
            .is_some_and(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "w1"),
        "{events:?}"
    );
    let end = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .ok_or_else(|| anyhow::anyhow!("no bookmark: {events:?}"))?;
    ensure!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true",
        "{end}"
    );
    Ok(())
}

/// A static pod shows in the API as its mirror pod: with its status, reachable by logs and
/// exec; deleting the mirror leaves the pod running and brings the mirror back; removing the
/// manifest removes the mirror.
#[test]
fn static_pods_have_mirror_pods() -> Result<()> {
    let node = TestNode::with_api()?;
    node.write_manifest(
        "web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo static hello; sleep 3600']}\n",
    );
    let mirror = wait_phase(&node, "web-node1", "Running")?;
    ensure!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string()
            && mirror["metadata"]["ownerReferences"][0]["kind"] == "Node"
            && mirror["spec"]["nodeName"] == "node1",
        "{mirror}"
    );
    let listed = ok(&node, &["get", "pods", "-l", "app=web"])?;
    ensure!(
        listed.contains("web-node1") && listed.contains("Running"),
        "{listed}"
    );
    let logs = wait_for("the static pod's logs", T, || {
        ok(&node, &["logs", "web-node1"])
            .ok()
            .filter(|l| l.contains("static hello"))
    })?;
    ensure!(logs == "static hello\n", "{logs}");
    let exec = ok(&node, &["exec", "web-node1", "--", "hostname"])?;
    ensure!(exec.trim() == "web-node1", "{exec}");

    // Deleting the mirror does not stop the static pod: the node makes a new mirror.
    let started =
        TestNode::container_status(&node.pod("web").context("web")?, "c")["containerID"].clone();
    let old_uid = mirror["metadata"]["uid"].clone();
    ok(&node, &["delete", "pod", "web-node1"])?;
    wait_for("a new mirror", T, || {
        let m = json(&node, &["get", "pod", "web-node1"]).ok()?;
        (m["metadata"]["uid"] != old_uid && m["status"]["phase"] == "Running").then_some(())
    })?;
    let still =
        TestNode::container_status(&node.pod("web").context("web")?, "c")["containerID"].clone();
    ensure!(
        still == started,
        "the container was replaced: {started} -> {still}"
    );

    node.remove_manifest("web.yaml");
    node.wait_gone("web", T)?;
    wait_for("the mirror to go", T, || {
        let out = node.kubectl(&["get", "pod", "web-node1"]);
        (!out.status.success()).then_some(())
    })?;
    Ok(())
}
