//! Seeing the node as Kubernetes users do: events named, counted and ordered as kubelet's
//! recorder makes them, the `/var/log/containers` links log shippers read, and the kubelet's
//! Summary API and resource metrics against the cgroups' own counters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn running(node: &TestNode, name: &str, container: &str) -> Result<Value> {
    wait_for(&format!("{name} running"), T, || {
        node.api_pod(name)
            .filter(|p| TestNode::running(p, container))
    })
    .with_context(|| node.agent_log())
}

fn events_of(node: &TestNode, pod: &str) -> Result<Vec<Value>> {
    let out = node.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "json",
    ])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The links in the node's `containers` directory, with their targets.
fn links(node: &TestNode) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(node.dir.join("containers"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), target))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A crash-looping container: its events are one object per kind of event, counted (not one
/// per restart), named `<pod>.<hex UnixNano>` so that name order is time order, and `kubectl
/// describe` shows the counts. Each instance whose log is kept has its link in `containers/`,
/// and the links go with the pod.
#[test]
fn crash_loop_events_are_counted_and_logs_linked() -> Result<()> {
    let node = TestNode::with_api()?;
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: app, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo boom; exit 1']}\n",
        &[],
    )?;
    let restarted = |n: i64| {
        move |p: &Value| p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(n)
    };
    wait_for("three restarts", Duration::from_secs(120), || {
        node.api_pod("crash").filter(restarted(3))
    })
    .with_context(|| node.agent_log())?;
    let events = events_of(&node, "crash")?;
    let mut names: Vec<&str> = events
        .iter()
        .filter_map(|e| e["metadata"]["name"].as_str())
        .collect();
    for name in &names {
        let suffix = name.strip_prefix("crash.").unwrap_or_default();
        ensure!(
            suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
            "event name {name}"
        );
    }
    // Name order is the order they were first seen.
    let mut by_time = events.clone();
    by_time.sort_by_key(|e| {
        (
            e["firstTimestamp"].as_str().unwrap_or_default().to_owned(),
            e["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    let time_order: Vec<&str> = by_time
        .iter()
        .filter_map(|e| e["metadata"]["name"].as_str())
        .collect();
    names.sort();
    ensure!(names == time_order, "{names:?} vs {time_order:?}");
    // One Event per (reason, message, container): repeats are counted.
    let mut keys: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["reason"], e["message"], e["involvedObject"]["fieldPath"]
            )
        })
        .collect();
    let all = keys.len();
    keys.sort();
    keys.dedup();
    ensure!(keys.len() == all, "repeated events: {events:#?}");
    let started = events
        .iter()
        .find(|e| e["reason"] == "Started")
        .context("a Started event")?;
    ensure!(started["count"].as_i64() >= Some(3), "{started:#}");
    ensure!(
        started["lastTimestamp"].as_str() >= started["firstTimestamp"].as_str(),
        "{started:#}"
    );
    let described = node.kubectl_ok(&["describe", "pod", "crash"])?;
    ensure!(
        described.contains(" (x") && described.contains(" over "),
        "{described}"
    );

    // The links: `<pod>_<ns>_<container>-<id>.log`, to the current and the previous log.
    let pod = node.api_pod("crash").context("crash")?;
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|i| i.strip_prefix("nodelet://"))
        .context("container id")?
        .to_owned();
    let found = wait_for("the current instance's link", T, || {
        let l = links(&node);
        l.iter()
            .any(|(name, _)| *name == format!("crash_default_app-{id}.log"))
            .then_some(l)
    })?;
    ensure!((1..=2).contains(&found.len()), "{found:?}");
    for (name, target) in &found {
        ensure!(name.starts_with("crash_default_app-"), "{name}");
        ensure!(
            target.starts_with(node.dir.join("logs"))
                && std::fs::read_to_string(target)?.contains("boom"),
            "{name} -> {}",
            target.display()
        );
    }
    node.kubectl_ok(&["delete", "pod", "crash", "--wait=true"])?;
    wait_for("links gone", T, || links(&node).is_empty().then_some(()))?;
    node.assert_clean()
}

fn cgroup_file(node: &TestNode, controller: &str, relative: &str, file: &str) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    let base = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join(controller)
    };
    base.join(node.cgroup_root.trim_start_matches('/'))
        .join("kubepods")
        .join(relative)
        .join(file)
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text.trim().parse()?)
}

/// A container's cgroup below `kubepods`, from its pod's QoS class, uid and container id.
fn container_cgroup(pod: &Value, container: usize) -> Result<String> {
    let tier = match pod["status"]["qosClass"].as_str() {
        Some("Guaranteed") => "",
        Some("Burstable") => "burstable/",
        _ => "besteffort/",
    };
    let uid = pod["metadata"]["uid"].as_str().context("uid")?;
    let id = pod["status"]["containerStatuses"][container]["containerID"]
        .as_str()
        .and_then(|i| i.strip_prefix("nodelet://"))
        .context("container id")?;
    Ok(format!("{tier}pod{uid}/{id}"))
}

const LOAD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: burn}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: cpu, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, 'while :; do :; done']}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: hold}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes:\n  - {name: mem, emptyDir: {medium: Memory}}\n  containers:\n  - name: mem\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'head -c 104857600 /dev/zero > /mem/x; echo held; sleep 3600']\n    volumeMounts: [{name: mem, mountPath: /mem}]\n";

/// `/stats/summary` and `/metrics/resource` on the kubelet port, for a pod burning a CPU and
/// one holding 100 MiB: the figures are the cgroups' own.
#[test]
fn summary_api_and_resource_metrics_read_the_cgroups() -> Result<()> {
    let node = TestNode::with_api()?;
    node.kubectl_create(LOAD, &[])?;
    let burn = running(&node, "burn", "cpu")?;
    running(&node, "hold", "mem")?;
    wait_for("100 MiB held", T, || {
        node.kubectl_ok(&["logs", "hold"])
            .ok()
            .filter(|l| l.contains("held"))
    })?;
    let get = |path: &str| -> Result<String> {
        let out = node
            .api_curl(true)?
            .args(["-k", "-f", "-s", &format!("https://127.0.0.1:10250{path}")])
            .output()?;
        ensure!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // A rate needs the sampler's earlier reading (every 10 s).
    let summary: Value = wait_for("CPU rates in the summary", Duration::from_secs(40), || {
        let s: Value = serde_json::from_str(&get("/stats/summary").ok()?).ok()?;
        let pod = s["pods"]
            .as_array()?
            .iter()
            .find(|p| p["podRef"]["name"] == "burn")?
            .clone();
        pod["containers"][0]["cpu"]["usageNanoCores"]
            .is_u64()
            .then_some(s)
    })?;
    let pod_of = |name: &str| -> Result<Value> {
        summary["pods"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["podRef"]["name"] == name))
            .cloned()
            .with_context(|| format!("{name} in {summary:#}"))
    };
    let n = &summary["node"];
    ensure!(n["nodeName"] == node.name.as_str(), "{n:#}");
    ensure!(n["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0), "{n:#}");
    ensure!(n["memory"]["workingSetBytes"].as_u64() > Some(0), "{n:#}");
    ensure!(n["fs"]["capacityBytes"].as_u64() > Some(0), "{n:#}");

    let b = pod_of("burn")?;
    ensure!(b["podRef"]["uid"] == burn["metadata"]["uid"], "{b:#}");
    let c = &b["containers"][0];
    ensure!(c["name"] == "cpu", "{c:#}");
    // Most of a core (the machine has two, shared with other tests).
    let cores = c["cpu"]["usageNanoCores"].as_u64().unwrap_or(0) as f64 / 1e9;
    ensure!(
        (0.3..=1.1).contains(&cores),
        "burn uses {cores} cores: {c:#}"
    );
    let reported = c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0);
    let cg = container_cgroup(&burn, 0)?;
    let own = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let stat = std::fs::read_to_string(cgroup_file(&node, "cpu", &cg, "cpu.stat"))?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1000
    } else {
        read_u64(&cgroup_file(&node, "cpuacct", &cg, "cpuacct.usage"))?
    };
    // Read just after: within 10 % (the counter grows by about a core meanwhile).
    ensure!(
        own >= reported && (own - reported) as f64 <= own as f64 * 0.1,
        "summary {reported} ns, cgroup {own} ns"
    );

    let h = pod_of("hold")?;
    let hold = node.api_pod("hold").context("hold")?;
    let ws = h["containers"][0]["memory"]["workingSetBytes"]
        .as_u64()
        .unwrap_or(0);
    let mib = 1024 * 1024;
    ensure!(
        (100 * mib..130 * mib).contains(&ws),
        "hold's working set {ws}: {h:#}"
    );
    let usage_file = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        ("memory", "memory.current")
    } else {
        ("memory", "memory.usage_in_bytes")
    };
    let usage = read_u64(&cgroup_file(
        &node,
        usage_file.0,
        &container_cgroup(&hold, 0)?,
        usage_file.1,
    ))?;
    let reported_usage = h["containers"][0]["memory"]["usageBytes"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        reported_usage.abs_diff(usage) as f64 <= usage as f64 * 0.1,
        "summary usage {reported_usage}, cgroup {usage}"
    );
    ensure!(
        h["network"]["name"] == "eth0" && h["network"]["interfaces"].is_array(),
        "{h:#}"
    );
    ensure!(h["ephemeral-storage"]["usedBytes"].is_u64(), "{h:#}");
    ensure!(
        h["containers"][0]["logs"]["usedBytes"].as_u64() > Some(0),
        "{h:#}"
    );

    // The same figures for Prometheus, under kubelet's names.
    let text = get("/metrics/resource")?;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("parse /metrics/resource")?;
    let sample = |metric: &str, pod: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("pod") == Some(pod))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => Some(v),
                _ => None,
            })
    };
    let ws_metric = sample("container_memory_working_set_bytes", "hold").context(text.clone())?;
    ensure!(
        (100.0 * mib as f64..130.0 * mib as f64).contains(&ws_metric),
        "{ws_metric}"
    );
    let cpu_metric = sample("container_cpu_usage_seconds_total", "burn").context(text.clone())?;
    ensure!(cpu_metric > 0.0, "{cpu_metric}");
    ensure!(
        sample("pod_cpu_usage_seconds_total", "burn").is_some(),
        "{text}"
    );
    ensure!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "node_memory_working_set_bytes"),
        "{text}"
    );

    // `kubectl top`, through the API's metrics.k8s.io: the same figures, against the cgroups'
    // counters read by the test itself.
    let hold_cg = container_cgroup(&hold, 0)?;
    let own_working_set = || -> Result<u64> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (usage, stat, inactive) = if v2 {
            ("memory.current", "memory.stat", "inactive_file ")
        } else {
            (
                "memory.usage_in_bytes",
                "memory.stat",
                "total_inactive_file ",
            )
        };
        let usage = read_u64(&cgroup_file(&node, "memory", &hold_cg, usage))?;
        let stat = std::fs::read_to_string(cgroup_file(&node, "memory", &hold_cg, stat))?;
        let inactive: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix(inactive))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(usage.saturating_sub(inactive))
    };
    let own_cpu = || -> Result<u64> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let stat = std::fs::read_to_string(cgroup_file(&node, "cpu", &cg, "cpu.stat"))?;
            Ok(stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1000)
        } else {
            read_u64(&cgroup_file(&node, "cpuacct", &cg, "cpuacct.usage"))
        }
    };
    let started = (std::time::Instant::now(), own_cpu()?);
    std::thread::sleep(Duration::from_secs(10));
    let top = node.kubectl_ok(&["top", "pod", "--containers", "--no-headers"])?;
    let own_rate = (own_cpu()? - started.1) as f64 / started.0.elapsed().as_secs_f64() / 1e6;
    let row = |pod: &str| -> Result<Vec<String>> {
        top.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(pod))
            .with_context(|| format!("{pod} in kubectl top: {top}"))
    };
    let burn_row = row("burn")?;
    ensure!(burn_row[1] == "cpu", "{top}");
    let millicores: f64 = burn_row[2].trim_end_matches('m').parse()?;
    ensure!(
        (millicores - own_rate).abs() <= own_rate * 0.1,
        "kubectl top says {millicores}m, the cgroup {own_rate:.0}m: {top}"
    );
    let hold_row = row("hold")?;
    let top_mib: f64 = hold_row[3].trim_end_matches("Mi").parse()?;
    let own_mib = own_working_set()? as f64 / mib as f64;
    ensure!(
        (top_mib - own_mib).abs() <= own_mib * 0.1,
        "kubectl top says {top_mib}Mi, the cgroup {own_mib:.1}Mi: {top}"
    );
    let top_node = node.kubectl_ok(&["top", "node", "--no-headers"])?;
    ensure!(
        top_node.starts_with(&node.name) && top_node.contains('%'),
        "{top_node}"
    );
    let one = node.kubectl_ok(&["top", "pod", "burn", "--no-headers"])?;
    ensure!(one.starts_with("burn "), "{one}");
    let missing = node.kubectl(&["top", "pod", "nosuch"]);
    ensure!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // A service account reads its own namespace's figures, as it reads its pods; nothing of the
    // node's, of other namespaces, or of the API's own metrics.
    node.kubectl_ok(&["create", "serviceaccount", "reader"])?;
    let token = node.kubectl_ok(&["create", "token", "reader"])?;
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let api = node.api_url();
    for (path, want) in [
        (
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
            "200",
        ),
        (
            "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods",
            "403",
        ),
        ("/apis/metrics.k8s.io/v1beta1/pods", "403"),
        ("/apis/metrics.k8s.io/v1beta1/nodes", "403"),
        ("/metrics", "403"),
    ] {
        let out = node
            .api_curl(false)?
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &bearer])
            .arg(format!("{api}{path}"))
            .output()?;
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            got == want,
            "{path} as a service account: {got}, not {want}"
        );
    }

    // The agent's own metrics under kubelet's names, and the API's under kube-apiserver's.
    let own = get("/metrics")?;
    let own = prometheus_parse::Scrape::parse(own.lines().map(|l| Ok(l.to_owned())))?;
    let value = |scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum::<f64>()
    };
    ensure!(value(&own, "kubelet_running_pods", None) >= 2.0, "{own:?}");
    ensure!(
        value(
            &own,
            "kubelet_running_containers",
            Some(("container_state", "running"))
        ) >= 2.0,
        "{own:?}"
    );
    ensure!(
        value(&own, "kubelet_pod_start_duration_seconds_count", None) >= 2.0,
        "{own:?}"
    );
    ensure!(
        value(&own, "kubelet_http_requests_total", Some(("path", "stats"))) >= 1.0,
        "{own:?}"
    );
    let api = node
        .api_curl(true)?
        .args(["-f", "-s", &format!("{}/metrics", node.api_url())])
        .output()?;
    let api = String::from_utf8_lossy(&api.stdout).into_owned();
    let api = prometheus_parse::Scrape::parse(api.lines().map(|l| Ok(l.to_owned())))?;
    ensure!(
        value(&api, "apiserver_request_total", Some(("resource", "pods"))) >= 1.0,
        "{api:?}"
    );
    ensure!(
        api.samples
            .iter()
            .any(|s| s.metric == "apiserver_request_duration_seconds_count"
                && s.labels.get("verb") == Some("LIST")),
        "{api:?}"
    );

    node.kubectl_ok(&["delete", "pod", "burn", "hold", "--wait=true"])?;
    node.assert_clean()
}
