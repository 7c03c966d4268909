//! The dashboard in a real browser (headless Chromium over WebDriver), inside a test node:
//! through a real `kubectl proxy` at the URL the Kubernetes notes give, and directly on the API
//! with a ServiceAccount's token. Screenshots of each view are kept in
//! `target/test-artifacts/dashboard/`.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::browser::{enter_network, kubectl_proxy, Browser, PROXY};
use nodelet_tests::{dashboard_assets, wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn run_pod(node: &TestNode, name: &str, command: &str) -> Result<()> {
    node.kubectl_ok(&[
        "run",
        name,
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        command,
    ])?;
    Ok(())
}

fn wait_running(node: &TestNode, name: &str) -> Result<()> {
    wait_for(&format!("{name} Running"), T, || {
        node.api_pod(name)
            .filter(|p| p["status"]["phase"] == "Running")
    })?;
    Ok(())
}

/// The rows of a table on the page, each a list of its cells' text.
const ROWS: &str = "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))";

async fn rows(b: &Browser, table: &str) -> Result<Vec<Vec<String>>> {
    let v = b.client.execute(ROWS, vec![table.into()]).await?;
    Ok(serde_json::from_value(v)?)
}

#[test]
fn the_dashboard_through_kubectl_proxy_follows_the_node_live() -> Result<()> {
    dashboard_assets();
    let node = TestNode::with_api()?;
    enter_network(&node)?;
    let mut proxy = kubectl_proxy(&node)?;
    let result = runtime().block_on(through_proxy(&node));
    let _ = proxy.kill();
    let _ = proxy.wait();
    result?;
    node.kubectl_ok(&["delete", "pod", "--all", "--grace-period=1"])?;
    node.settled()
}

async fn through_proxy(node: &TestNode) -> Result<()> {
    // A pod before the browser: the first one makes the pod network's bridge and its address,
    // and Chromium, which shares the node's network, takes that for a network change and
    // aborts its loads (ERR_NETWORK_CHANGED).
    run_pod(node, "web", "trap 'exit 0' TERM; sleep 3600 & wait")?;
    wait_running(node, "web")?;
    session(node, async |b| proxy_views(node, b).await).await
}

/// A browser for `check`, then closed; the page must have logged no JavaScript error.
async fn session(node: &TestNode, check: impl AsyncFnOnce(&Browser) -> Result<()>) -> Result<()> {
    let b = Browser::start(node, "dashboard").await?;
    let checked = check(&b).await;
    let errors = b.javascript_errors().await;
    b.close(node).await?;
    checked?;
    let errors = errors?;
    ensure!(errors.is_empty(), "the page logged errors: {errors:#?}");
    Ok(())
}

/// The pods table's row of `default/<pod>` (a JavaScript expression; undefined if none).
fn pod_row(pod: &str) -> String {
    format!("[...document.querySelectorAll('#pods tbody tr')].find(r => r.dataset.pod == 'default/{pod}')")
}

/// Clicks a row's delete button twice (it asks once more).
async fn delete_from_table(b: &Browser, pod: &str) -> Result<()> {
    for _ in 0..2 {
        b.client
            .execute(
                &format!("{}.querySelector('button').click()", pod_row(pod)),
                vec![],
            )
            .await?;
    }
    Ok(())
}

async fn proxy_views(node: &TestNode, b: &Browser) -> Result<()> {
    // The node: its conditions, capacity, and the usage graphs.
    b.client.goto(PROXY).await?;
    b.until(
        "the node's card, Ready",
        T,
        "const c = document.querySelector('[data-node=node1]'); return c && c.innerText.includes('Ready') && c.innerText.includes('MemoryPressure') && c.innerText.includes('allocatable'.toUpperCase()) && c.querySelectorAll('svg').length == 2",
    )
    .await?;
    b.screenshot("node").await?;

    // The pods table follows `kubectl run` and `kubectl delete` live.
    b.client.goto(&format!("{PROXY}#/pods")).await?;
    b.until(
        "the pods table",
        T,
        "return document.querySelector('#pods tbody tr') != null",
    )
    .await?;
    run_pod(
        node,
        "writer",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
    )?;
    b.until(
        "writer in the table, live",
        T,
        &format!("return {} != null", pod_row("writer")),
    )
    .await?;
    let row = b
        .until(
            "web Running in the table",
            T,
            &format!(
                "const r = {}; return r && r.cells[3].innerText == 'Running' && r.innerText",
                pod_row("web")
            ),
        )
        .await?;
    let api = node.api_pod("web").context("web in the API")?;
    let ip = api["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let row = row.as_str().unwrap_or_default().to_owned();
    ensure!(
        row.contains("1/1") && row.contains(&ip) && row.contains("node1"),
        "the row is kubectl's -o wide: {row}"
    );
    let header = b
        .client
        .execute(
            "return document.querySelector('#pods thead').innerText",
            vec![],
        )
        .await?;
    for column in [
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
    ] {
        ensure!(
            header
                .as_str()
                .unwrap_or_default()
                .to_uppercase()
                .contains(column),
            "{column} in {header}"
        );
    }
    b.screenshot("pods").await?;

    // Filtered by a label selector (kubectl run labels its pods run=<name>).
    b.client
        .goto(&format!("{PROXY}#/pods?labelSelector=run%3Dwriter"))
        .await?;
    b.until(
        "only writer listed",
        T,
        "const r = [...document.querySelectorAll('#pods tbody tr')]; return r.length == 1 && r[0].dataset.pod == 'default/writer'",
    )
    .await?;

    // The pod's page: containers, conditions, events in time order, labels, YAML.
    b.client.goto(&format!("{PROXY}#/pod/default/web")).await?;
    b.until(
        "web's page with its events",
        T,
        "return document.querySelector('#containers') && document.querySelectorAll('#events tbody tr').length >= 2 && document.getElementById('yaml').textContent.includes('kind: Pod')",
    )
    .await?;
    let shown: Vec<String> = rows(b, "#events")
        .await?
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    let events: Value = serde_json::from_str(&node.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "json",
    ])?)?;
    // Time order as `kubectl describe` has it: last seen, then first seen, then name (the names
    // end in the hex nanoseconds of their making).
    let mut by_time: Vec<(String, String, String, String)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let t = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            let last = if t("lastTimestamp").is_empty() {
                t("eventTime")
            } else {
                t("lastTimestamp")
            };
            (
                last,
                t("firstTimestamp"),
                e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                t("reason"),
            )
        })
        .collect();
    by_time.sort();
    let reasons: Vec<String> = by_time.into_iter().map(|(_, _, _, r)| r).collect();
    ensure!(
        shown == reasons,
        "events in time order: page {shown:?}, API {reasons:?}"
    );
    ensure!(shown.iter().any(|r| r == "Started"), "{shown:?}");
    b.client
        .execute("document.getElementById('events').scrollIntoView()", vec![])
        .await?;
    b.screenshot("pod").await?;
    b.client.execute("window.scrollTo(0, 0)", vec![]).await?;

    // A label edit reaches the API.
    b.client
        .find(fantoccini::Locator::Id("edit"))
        .await?
        .click()
        .await?;
    let text = b
        .client
        .find(fantoccini::Locator::Id("labels-text"))
        .await?;
    text.clear().await?;
    text.send_keys("run=web\ntier=front").await?;
    b.client
        .find(fantoccini::Locator::Css("#edit-labels button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_for("tier=front on web", T, || {
        node.api_pod("web")
            .filter(|p| p["metadata"]["labels"]["tier"] == "front")
    })?;
    b.until(
        "the new label shown",
        T,
        "return document.getElementById('labels').innerText.includes('tier=front')",
    )
    .await?;

    // Logs follow a writing container.
    b.client
        .goto(&format!("{PROXY}#/logs/default/writer"))
        .await?;
    let first = b
        .until("writer's log", T, "const t = document.getElementById('logs'); return t && t.textContent.includes('line 1') && t.textContent.length")
        .await?;
    b.until(
        "the log growing",
        T,
        &format!(
            "const t = document.getElementById('logs'); return t.textContent.length > {} + 40",
            first
        ),
    )
    .await?;
    b.screenshot("logs").await?;

    // A shell: `hostname` prints the pod's name.
    b.client
        .goto(&format!("{PROXY}#/shell/default/web"))
        .await?;
    b.until("the shell connected", T, "const s = document.getElementById('shell-state'); return s && s.textContent.startsWith('connected')").await?;
    b.until(
        "a prompt",
        T,
        "const r = document.querySelector('.xterm-rows'); return r && r.innerText.includes('#')",
    )
    .await?;
    let input = b
        .client
        .find(fantoccini::Locator::Css(".xterm-helper-textarea"))
        .await?;
    input.send_keys("hostname; echo done-$((6*7))\n").await?;
    let screen = b
        .until("hostname's answer", T, "const r = document.querySelector('.xterm-rows').innerText; return r.includes('done-42') && r")
        .await?;
    let screen = screen.as_str().unwrap_or_default();
    ensure!(
        screen.lines().any(|l| l.trim() == "web"),
        "the shell printed the pod's name: {screen}"
    );
    b.screenshot("shell").await?;

    // Create from YAML.
    b.client.goto(&format!("{PROXY}#/create")).await?;
    let manifest = b.client.find(fantoccini::Locator::Id("manifest")).await?;
    manifest
        .send_keys("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: made-in-the-browser\ndata:\n  a: b\n")
        .await?;
    b.client
        .find(fantoccini::Locator::Css("#create button[type=submit]"))
        .await?
        .click()
        .await?;
    b.until(
        "created",
        T,
        "return document.getElementById('results').innerText.includes('created')",
    )
    .await?;
    let cm = node.kubectl_ok(&[
        "get",
        "configmap",
        "made-in-the-browser",
        "-o",
        "jsonpath={.data.a}",
    ])?;
    ensure!(cm == "b", "the ConfigMap: {cm}");

    // Delete from the table (asked twice), and the row goes live.
    b.client.goto(&format!("{PROXY}#/pods")).await?;
    b.until(
        "writer's delete button",
        T,
        &format!(
            "return {}.querySelector('button') != null",
            pod_row("writer")
        ),
    )
    .await?;
    delete_from_table(b, "writer").await?;
    b.until(
        "writer out of the table",
        T,
        &format!("return {} == null", pod_row("writer")),
    )
    .await?;
    ensure!(
        node.api_pod("writer").is_none(),
        "writer deleted in the API"
    );

    // On a phone's screen.
    b.client.set_window_size(390, 844).await?;
    b.until(
        "the table at phone width",
        T,
        "return document.querySelector('#pods tbody tr') != null",
    )
    .await?;
    b.screenshot("pods-phone").await?;
    b.client.set_window_size(1280, 900).await?;

    // By now the node has been sampled (every 10 s): the graphs have points, the figures
    // are the node's.
    b.client.goto(&format!("{PROXY}#/node")).await?;
    let now = b
        .until(
            "the graphs drawn",
            T,
            "const l = [...document.querySelectorAll('.graph polyline')]; return l.length == 2 && l.every(p => p.getAttribute('points').trim().length > 0) && document.querySelector('.graph .title span').innerText",
        )
        .await?;
    ensure!(
        now.as_str().unwrap_or_default().contains("cores"),
        "the CPU now: {now}"
    );
    b.screenshot("node-graphs").await?;
    Ok(())
}

#[test]
fn the_dashboard_on_the_api_asks_for_a_token_and_acts_with_its_rights() -> Result<()> {
    dashboard_assets();
    let node = TestNode::with_api()?;
    enter_network(&node)?;
    node.kubectl_ok(&["create", "serviceaccount", "viewer"])?;
    let token = node
        .kubectl_ok(&["create", "token", "viewer"])?
        .trim()
        .to_owned();
    run_pod(&node, "first", "trap 'exit 0' TERM; sleep 3600 & wait")?;
    wait_running(&node, "first")?;
    let api = node.api_url();
    runtime().block_on(session(&node, async |b| {
        direct(&node, b, &api, &token).await
    }))?;
    node.kubectl_ok(&["delete", "pod", "--all", "--grace-period=1"])?;
    node.settled()
}

async fn direct(node: &TestNode, b: &Browser, api: &str, token: &str) -> Result<()> {
    // A browser asking for the API's root is sent to the dashboard, which asks for a token.
    b.client.goto(&format!("{api}/")).await?;
    b.until(
        "the login form",
        T,
        "return document.getElementById('token') != null",
    )
    .await?;
    let url = b.client.current_url().await?;
    ensure!(url.path() == "/dashboard/", "redirected to {url}");
    b.screenshot("login").await?;
    b.client
        .find(fantoccini::Locator::Id("token"))
        .await?
        .send_keys(token)
        .await?;
    b.client
        .find(fantoccini::Locator::Css("#login button[type=submit]"))
        .await?
        .click()
        .await?;
    // The account reads its own namespace's pods: the page turns to it.
    b.client.goto(&format!("{api}/dashboard/#/pods")).await?;
    b.until(
        "first listed in default",
        T,
        &format!("const r = {}; return document.getElementById('namespace').value == 'default' && r != null && r.cells[2].innerText == 'Running'", pod_row("first")),
    )
    .await?;
    run_pod(node, "second", "trap 'exit 0' TERM; sleep 3600 & wait")?;
    b.until(
        "second listed live",
        T,
        &format!("return {} != null", pod_row("second")),
    )
    .await?;
    b.screenshot("direct-pods").await?;
    // Its rights, not more: a delete is refused and the page says so.
    delete_from_table(b, "first").await?;
    b.until(
        "the refusal shown",
        T,
        "const e = document.querySelector('.error'); return e && e.innerText.includes('forbidden') && e.innerText",
    )
    .await?;
    ensure!(node.api_pod("first").is_some(), "first was not deleted");
    // `kubectl delete` elsewhere: the row goes, live.
    node.kubectl_ok(&["delete", "pod", "second", "--grace-period=1"])?;
    b.until(
        "second gone from the table, live",
        T,
        &format!("return {} == null", pod_row("second")),
    )
    .await?;
    Ok(())
}

/// What the dashboard's paths answer without a browser: the page's files to anyone, the API
/// below it only with the caller's own rights, and a clear refusal for any other Service.
#[test]
fn the_dashboards_paths_keep_the_apis_rules() -> Result<()> {
    dashboard_assets();
    let node = TestNode::with_api()?;
    let api = node.api_url();
    let status = |auth: bool, extra: &[&str], path: &str| -> Result<(String, String)> {
        let out = node
            .api_curl(auth)?
            .args(["-o", "-", "-w", "\n%{http_code} %{redirect_url}"])
            .args(extra)
            .arg(format!("{api}{path}"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or_default();
        Ok((code.trim().to_owned(), body.to_owned()))
    };
    let svc = node.kubectl_ok(&[
        "get",
        "svc",
        "-n",
        "kubernetes-dashboard",
        "kubernetes-dashboard",
        "--no-headers",
    ])?;
    ensure!(
        svc.contains("ClusterIP") && svc.contains("443/TCP"),
        "{svc}"
    );
    // The page and its terminal need no token (the page asks for one).
    let (code, body) = status(false, &[], "/dashboard/")?;
    ensure!(code == "200" && body.contains("app.js"), "{code} {body}");
    let (code, _) = status(false, &[], "/dashboard/xterm.js")?;
    ensure!(code == "200", "{code}");
    // The API below it does, and gives that token's rights.
    let (code, _) = status(false, &[], "/dashboard/k8s/api/v1/pods")?;
    ensure!(code == "401", "{code}");
    node.kubectl_ok(&["create", "serviceaccount", "viewer"])?;
    let token = node.kubectl_ok(&["create", "token", "viewer"])?;
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = status(false, &["-H", &bearer], "/dashboard/k8s/api/v1/pods")?;
    ensure!(
        code == "403" && body.contains("cannot list resource \\\"pods\\\""),
        "{code} {body}"
    );
    let (code, _) = status(
        false,
        &["-H", &bearer],
        "/dashboard/k8s/api/v1/namespaces/default/pods",
    )?;
    ensure!(code == "200", "{code}");
    let (code, _) = status(false, &["-H", &bearer], "/dashboard/history")?;
    ensure!(code == "403", "{code}");
    let proxy =
        "/api/v1/namespaces/kubernetes-dashboard/services/https:kubernetes-dashboard:/proxy";
    let (code, _) = status(false, &["-H", &bearer], &format!("{proxy}/"))?;
    ensure!(
        code == "403",
        "a service account may not use the proxy: {code}"
    );
    // The admin: the proxy's bare path is sent below it; another Service is refused by name.
    let (code, _) = status(true, &[], proxy)?;
    ensure!(code == format!("302 {api}{proxy}/"), "{code}");
    let (code, body) = status(true, &[], "/api/v1/namespaces/default/services/web/proxy/")?;
    ensure!(
        code == "503" && body.contains("no endpoints available for service \\\"web\\\""),
        "{code} {body}"
    );
    // The dashboard is entered once: below it, neither base is the dashboard again (a nested
    // path must not recurse as deep as the URL is long, before any credentials are asked).
    let nested = "/dashboard/k8s".repeat(3000) + "/api/v1/namespaces";
    let (code, _) = status(false, &["--http1.1"], &nested)?;
    ensure!(code == "401", "nested dashboard paths, no token: {code}");
    let (code, _) = status(true, &["--http1.1"], &nested)?;
    ensure!(code == "404", "nested dashboard paths, the admin: {code}");
    let (code, _) = status(true, &[], &format!("{proxy}/k8s{proxy}/app.js"))?;
    ensure!(code == "404", "the proxy inside the proxy: {code}");
    ensure!(
        node.agent_pid() > 0 && node.kubectl_ok(&["get", "ns", "default"]).is_ok(),
        "the API still answers"
    );
    // Create from YAML: each document, each item of a List, with a reason for what failed.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: two}\n";
    let (code, body) = status(
        true,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            yaml,
        ],
        "/dashboard/create?namespace=default",
    )?;
    let answer: Value = serde_json::from_str(&body)?;
    ensure!(
        code == "200"
            && answer["results"][0]["created"] == true
            && answer["results"][1]["created"] == false
            && answer["results"][1]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("Deployment"),
        "{code} {body}"
    );
    // Objects as YAML when asked.
    let (code, body) = status(
        true,
        &["-H", "Accept: application/yaml"],
        "/api/v1/namespaces/default/configmaps/one",
    )?;
    ensure!(
        code == "200" && body.contains("kind: ConfigMap\n"),
        "{code} {body}"
    );
    node.assert_clean()
}
