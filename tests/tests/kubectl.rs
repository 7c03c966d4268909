//! The stock kubectl against nodelet's built-in Kubernetes API, in a test node: the walkthrough
//! of the issue, command by command, checking output and exit codes.

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{wait_for, Registry, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs kubectl and requires success; returns stdout.
fn ok(node: &TestNode, args: &[&str]) -> Result<String> {
    let out = node.kubectl(args);
    ensure!(out.status.success(), "kubectl {}: {}", args.join(" "), text(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs kubectl and requires failure; returns stderr.
fn fails(node: &TestNode, args: &[&str]) -> Result<String> {
    let out = node.kubectl(args);
    ensure!(!out.status.success(), "kubectl {} should fail: {}", args.join(" "), text(&out));
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
    .with_context(|| format!("{}\nagent log:\n{}", text(&node.kubectl(&["describe", "pod", pod])), node.agent_log()))
}

/// The text with every run of spaces made one, so columns can be matched.
fn squeeze(text: &str) -> String {
    text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
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
fn walkthrough() -> Result<()> {
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
    ensure!(again.contains("Error from server (AlreadyExists): pods \"kubia\" already exists"), "{again}");
    let pod = wait_phase(&node, "kubia", "Running")?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    ensure!(ip.starts_with("10.244."), "pod IP {ip}");
    let table = ok(&node, &["get", "pods"])?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{table}");
    ensure!(table.lines().nth(1).is_some_and(|l| l.starts_with("kubia") && l.contains("1/1") && l.contains("Running")), "{table}");
    let wide = ok(&node, &["get", "pods", "-o", "wide"])?;
    ensure!(wide.contains(&ip) && wide.contains("node1") && wide.contains("NOMINATED NODE"), "{wide}");

    // describe, yaml, json
    let describe = squeeze(&ok(&node, &["describe", "pod", "kubia"])?);
    for want in ["Name: kubia", "Node: node1", "Status: Running", &format!("IP: {ip}"), "Ready True", "Normal Scheduled", "default-scheduler Successfully assigned default/kubia to node1"] {
        ensure!(describe.contains(want), "describe lacks {want:?}:\n{describe}");
    }
    let yaml = ok(&node, &["get", "po", "kubia", "-o", "yaml"])?;
    ensure!(yaml.contains("kind: Pod") && yaml.contains("nodeName: node1") && yaml.contains("terminationGracePeriodSeconds: 30"), "{yaml}");

    // the pod answers on its IP
    let hit = node.net_command("curl").args(["-s", "-m", "5", &format!("http://{ip}:8080/")]).output()?;
    ensure!(String::from_utf8_lossy(&hit.stdout).contains("You've hit kubia"), "{}", text(&hit));

    // get nodes
    let nodes = ok(&node, &["get", "nodes"])?;
    ensure!(nodes.lines().nth(1).is_some_and(|l| l.starts_with("node1") && l.contains("Ready")), "{nodes}");

    // delete waits until the pod is gone
    let out = ok(&node, &["delete", "pod", "kubia", "--grace-period=1"])?;
    ensure!(out.trim() == "pod \"kubia\" deleted", "{out}");
    let gone = fails(&node, &["get", "pod", "kubia"])?;
    ensure!(gone.contains("Error from server (NotFound): pods \"kubia\" not found"), "{gone}");
    wait_for("the pod's sandbox to go", T, || node.pods().ok().filter(|p| p.is_empty()))?;
    Ok(())
}
