//! The density scenario, shared by the test (`tests/scale.rs`, 200 pods) and the benchmark
//! (`BENCH=scale`, 1,000): pods created at once through the built-in API start, report status,
//! answer `kubectl get`/`logs`/`exec`, survive an agent SIGKILL without a container restart,
//! refuse one pod too many, and are deleted with nothing left behind; then as many static pods
//! do the same from their manifests. Every step is checked;
//! what it took is returned for the benchmark to print (the test asserts no timing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{wait_for, TestNode};

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct Report {
    pub pods: usize,
    /// `kubectl create -f` of every pod to all Running (as the API reports them).
    pub create_to_running: Duration,
    pub agent_rss_kib: u64,
    /// The agent's CPU use over 10 s with every pod running, in percent of one core.
    pub agent_idle_cpu_percent: f64,
    pub agent_fds: usize,
    /// `GET /api/v1/namespaces/default/pods` as kubectl asks for it (Table), the server's part.
    pub get_pods_median: Duration,
    /// SIGKILL of the agent to every pod Ready again with the same container instances.
    pub restart_to_readopted: Duration,
    /// `kubectl delete pods --all` to no pod and no pod process left.
    pub delete_all: Duration,
    /// Shim RSS and PSS per pod, KiB, means.
    pub shim_rss_kib: f64,
    pub shim_pss_kib: f64,
    /// The same number of static pods: manifests written to every mirror pod Ready, and
    /// manifests removed to no pod left.
    pub static_to_running: Duration,
    pub static_delete_all: Duration,
}

fn pod_yaml(i: usize) -> String {
    // A container that ends on TERM, as a well-behaved server does (the grace period is not
    // what deletion waits for).
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p-{i}, labels: {{app: scale}}}}\nspec:\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'trap \"exit 0\" TERM; echo started; sleep 86400 & wait']\n"
    )
}

fn static_yaml(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: s-{i}, labels: {{app: static-scale}}}}\nspec:\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'trap \"exit 0\" TERM; echo started; sleep 86400 & wait']\n"
    )
}

/// The API's pods of the `app=scale` label, by name.
fn api_pods(node: &TestNode) -> Result<BTreeMap<String, Value>> {
    labelled(node, "app=scale")
}

/// The API's pods of a label, by name.
fn labelled(node: &TestNode, selector: &str) -> Result<BTreeMap<String, Value>> {
    let out = node.kubectl(&["get", "pods", "-l", selector, "-o", "json"]);
    ensure!(
        out.status.success(),
        "kubectl get pods: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p.clone(),
            )
        })
        .collect())
}

/// The end of a long log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One pod as the API has it.
fn get_pod(node: &TestNode, name: &str) -> Option<Value> {
    let out = node.kubectl(&["get", "pod", name, "-o", "json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// Each Ready pod's container instance, while every one of the `pods` is Ready.
fn all_ready(node: &TestNode, pods: usize) -> Option<BTreeMap<String, String>> {
    ready_of(node, "app=scale", pods)
}

fn ready_of(node: &TestNode, selector: &str, pods: usize) -> Option<BTreeMap<String, String>> {
    let list = labelled(node, selector).ok()?;
    let ready: BTreeMap<String, String> = list
        .iter()
        .filter_map(|(name, p)| {
            let s = &p["status"]["containerStatuses"][0];
            (s["ready"] == true).then(|| {
                (
                    name.clone(),
                    s["containerID"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect();
    (ready.len() == pods).then_some(ready)
}

fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| crate::kib(&s, field))
        .unwrap_or(0)
}

/// Runs the scenario with `pods` pods on a node of its own.
pub fn run(pods: usize) -> Result<Report> {
    let limit = Duration::from_secs(60 + pods as u64 / 5);
    let mut node = TestNode::with_config(
        "node1",
        &format!("maxPods: {pods}\npodCIDR: 10.244.0.0/21\n"),
    )?;
    node.start_agent()?;
    node.wait_api()?;
    let mut report = Report {
        pods,
        ..Default::default()
    };

    eprintln!("scale: creating {pods} pods");
    let all: String = (0..pods).map(|i| pod_yaml(i) + "---\n").collect();
    let t = Instant::now();
    node.kubectl_create(&all, &[])?;
    let before = wait_for("every pod ready", limit, || all_ready(&node, pods))
        .with_context(|| tail(&node.agent_log()))?;
    report.create_to_running = t.elapsed();

    // The node answers as it does with one pod.
    let logs = node.kubectl_ok(&["logs", "p-0"])?;
    ensure!(logs.contains("started"), "logs: {logs}");
    let last = format!("p-{}", pods - 1);
    let out = node.kubectl_ok(&["exec", &last, "--", "echo", "inside"])?;
    ensure!(out.trim() == "inside", "exec: {out}");
    let table = node.kubectl_ok(&["get", "pods", "--no-headers"])?;
    ensure!(
        table.lines().count() == pods,
        "kubectl get pods listed {}",
        table.lines().count()
    );
    let mut gets = Vec::new();
    for _ in 0..5 {
        let out = node
            .api_curl(true)?
            .args(["-s", "-o", "/dev/null", "-w", "%{time_starttransfer}", "-H"])
            .arg("Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
            .arg(format!(
                "{}/api/v1/namespaces/default/pods?limit=500",
                node.api_url()
            ))
            .output()?;
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        gets.push(Duration::from_secs_f64(secs));
    }
    gets.sort();
    report.get_pods_median = gets[gets.len() / 2];

    // Idle: every pod running, nothing asked of the node.
    std::thread::sleep(Duration::from_secs(3));
    let agent = node.agent_pid();
    let ticks = cpu_ticks(agent)?;
    std::thread::sleep(Duration::from_secs(10));
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    report.agent_idle_cpu_percent = (cpu_ticks(agent)? - ticks) as f64 / hz / 10.0 * 100.0;
    report.agent_rss_kib = status_kib(agent, "VmRSS:");
    report.agent_fds = std::fs::read_dir(format!("/proc/{agent}/fd"))?.count();
    let shims = crate::shim_memory_kib(&node);
    ensure!(shims.len() == pods, "{} shims for {pods} pods", shims.len());
    report.shim_rss_kib = shims.iter().map(|m| m.0).sum::<u64>() as f64 / pods as f64;
    report.shim_pss_kib = shims.iter().map(|m| m.1).sum::<u64>() as f64 / pods as f64;

    // One pod too many: the scheduler leaves it Pending ("Too many pods"); bound to the node
    // anyway, it is kubelet's admission failure.
    node.kubectl_create(&pod_yaml(pods), &[])?;
    let pending = format!("p-{pods}");
    let node_ref = &node;
    let unschedulable = wait_for(
        "the extra pod unschedulable",
        Duration::from_secs(30),
        || {
            let p = get_pod(node_ref, &pending)?;
            let c = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (c["status"] == "False").then_some(c)
        },
    )?;
    ensure!(
        unschedulable["message"]
            .as_str()
            .is_some_and(|m| m.contains("Too many pods")),
        "{unschedulable}"
    );
    let bound = pod_yaml(pods + 1).replace("  containers:", "  nodeName: node1\n  containers:");
    node.kubectl_create(&bound, &[])?;
    let extra = format!("p-{}", pods + 1);
    let refused = wait_for(
        "the bound extra pod rejected",
        Duration::from_secs(30),
        || get_pod(node_ref, &extra).filter(|p| p["status"]["phase"] == "Failed"),
    )?;
    ensure!(
        refused["status"]["reason"] == "OutOfpods",
        "{}",
        refused["status"]
    );
    node.kubectl_ok(&["delete", "pod", &pending, &extra])?;

    eprintln!("scale: restarting the agent");
    // The agent dies; its pods do not.
    node.stop_agent(nix::sys::signal::Signal::SIGKILL)?;
    let t = Instant::now();
    node.start_agent()?;
    let after = wait_for("every pod ready again", limit, || all_ready(&node, pods))
        .with_context(|| tail(&node.agent_log()))?;
    report.restart_to_readopted = t.elapsed();
    if after != before {
        let changed: Vec<_> = before
            .iter()
            .filter(|(n, id)| after.get(*n) != Some(id))
            .take(5)
            .collect();
        bail!("container instances changed across the agent's restart: {changed:?}");
    }
    let restarts = api_pods(&node)?
        .values()
        .filter(|p| p["status"]["containerStatuses"][0]["restartCount"] != 0)
        .count();
    ensure!(restarts == 0, "{restarts} pods restarted a container");

    eprintln!("scale: deleting every pod");
    let t = Instant::now();
    node.kubectl_ok(&["delete", "pods", "--all", "--wait=false"])
        .with_context(|| tail(&node.agent_log()))?;
    wait_for("every pod gone", limit, || {
        (api_pods(&node).ok()?.is_empty() && node.processes().is_empty()).then_some(())
    })
    .with_context(|| tail(&node.agent_log()))?;
    report.delete_all = t.elapsed();
    node.assert_clean()?;

    statics(&mut node, &mut report, limit)?;
    node.assert_clean()?;
    Ok(report)
}

/// As many static pods: they start from their manifests, show as mirror pods, answer `logs` and
/// `exec`, survive an agent SIGKILL, and go with their files.
fn statics(node: &mut TestNode, report: &mut Report, limit: Duration) -> Result<()> {
    let pods = report.pods;
    eprintln!("scale: {pods} static pods");
    let t = Instant::now();
    for i in 0..pods {
        node.write_manifest(&format!("s-{i}.yaml"), &static_yaml(i));
    }
    let selector = "app=static-scale";
    let before = wait_for("every static pod ready", limit, || {
        ready_of(node, selector, pods)
    })
    .with_context(|| tail(&node.agent_log()))?;
    report.static_to_running = t.elapsed();
    let last = format!("s-{}-node1", pods - 1);
    let logs = node.kubectl_ok(&["logs", "s-0-node1"])?;
    ensure!(logs.contains("started"), "logs: {logs}");
    let out = node.kubectl_ok(&["exec", &last, "--", "echo", "inside"])?;
    ensure!(out.trim() == "inside", "exec: {out}");

    node.stop_agent(nix::sys::signal::Signal::SIGKILL)?;
    node.start_agent()?;
    let after = wait_for("every static pod ready again", limit, || {
        ready_of(node, selector, pods)
    })
    .with_context(|| tail(&node.agent_log()))?;
    ensure!(
        after == before,
        "static pods' container instances changed across the agent's restart"
    );

    let t = Instant::now();
    for i in 0..pods {
        node.remove_manifest(&format!("s-{i}.yaml"));
    }
    wait_for("every static pod gone", limit, || {
        (labelled(node, selector).ok()?.is_empty() && node.processes().is_empty()).then_some(())
    })
    .with_context(|| tail(&node.agent_log()))?;
    report.static_delete_all = t.elapsed();
    Ok(())
}
