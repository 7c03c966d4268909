//! `kubectl logs`, `exec` and `port-forward` through the built-in API to the node's kubelet API,
//! over WebSocket and over SPDY, with several kubectl versions.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{describe_output, kubectl_path, wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    describe_output(out)
}

/// kubectl (`binary`) with extra environment, in the node.
fn kubectl_env(node: &TestNode, binary: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let home = node.dir.join("home");
    let _ = std::fs::create_dir_all(&home);
    let mut cmd = node.net_command(kubectl_path(binary));
    cmd.env("HOME", &home)
        .arg("--kubeconfig")
        .arg(node.kubeconfig())
        .arg("--cache-dir")
        .arg(home.join(format!("cache-{binary}")))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn ok(node: &TestNode, args: &[&str]) -> Result<String> {
    node.kubectl_ok(args)
}

fn create(node: &TestNode, yaml: &str) -> Result<()> {
    node.kubectl_create(yaml, &[]).map(drop)
}

fn running(node: &TestNode, pod: &str) -> Result<Value> {
    wait_for(&format!("{pod} running"), T, || {
        let out = node.kubectl(&["get", "pod", pod, "-o", "json"]);
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .all(|c| c["ready"] == true);
        (p["status"]["phase"] == "Running" && ready).then_some(p)
    })
    .with_context(|| node.agent_log())
}

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: talk}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    env: [{name: GREETING, value: hello}]\n    command: [sh, -c, 'i=0; while true; do echo \"line $i\"; i=$((i+1)); sleep 0.2; done']\n  - name: side\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'echo side says hi; echo to stderr >&2; sleep 3600']\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: kubia\n    image: luksa/kubia\n    imagePullPolicy: IfNotPresent\n    ports: [{containerPort: 8080}]\n  - name: blob\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'mkdir -p /srv && head -c 100000000 /dev/urandom > /srv/blob && sha256sum /srv/blob > /srv/blob.sum && echo serving blob && httpd -f -p 9090 -h /srv']\n";

#[test]
fn logs_exec_and_port_forward() -> Result<()> {
    let node = TestNode::with_api()?;
    create(&node, PODS)?;
    running(&node, "talk")?;
    running(&node, "web")?;

    // logs, logs -c, with kubectl's container defaulting
    wait_for("some log lines", T, || {
        ok(&node, &["logs", "talk", "-c", "main"])
            .ok()
            .filter(|l| l.contains("line 3"))
    })?;
    let side = node.kubectl(&["logs", "talk", "-c", "side"]);
    // stdout and stderr are two pipes: their lines interleave in either order.
    let mut lines: Vec<String> = String::from_utf8_lossy(&side.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    ensure!(lines == ["side says hi", "to stderr"], "{}", text(&side));
    let defaulted = node.kubectl(&["logs", "talk"]);
    ensure!(
        String::from_utf8_lossy(&defaulted.stderr)
            .contains("Defaulted container \"main\" out of: main, side"),
        "{}",
        text(&defaulted)
    );
    let tail = ok(&node, &["logs", "talk", "-c", "main", "--tail=2"])?;
    ensure!(tail.lines().count() == 2, "{tail}");
    let stamped = ok(&node, &["logs", "talk", "-c", "side", "--timestamps"])?;
    ensure!(
        stamped.starts_with("20") && stamped.contains("Z side says hi"),
        "{stamped}"
    );
    let previous = node.kubectl(&["logs", "talk", "-c", "main", "--previous"]);
    ensure!(
        String::from_utf8_lossy(&previous.stderr)
            .contains("previous terminated container \"main\" in pod \"talk\" not found"),
        "{}",
        text(&previous)
    );

    // logs -f keeps streaming while the container writes
    let mut follow = kubectl_env(&node, "kubectl", &[], &["logs", "-f", "talk", "-c", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = follow.stdout.take().expect("stdout");
    let seen = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() > 30 {
                return text;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let followed = seen.join().expect("reader");
    follow.kill()?;
    follow.wait()?;
    ensure!(
        followed.lines().count() > 30,
        "logs -f stopped early: {followed}"
    );

    // exec: output, exit codes, environment, -c
    let out = ok(
        &node,
        &[
            "exec",
            "talk",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo $GREETING; hostname; id -u",
        ],
    )?;
    ensure!(out == "hello\ntalk\n0\n", "{out}");
    let failing = node.kubectl(&[
        "exec",
        "talk",
        "-c",
        "side",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    ensure!(failing.status.code() == Some(3), "{}", text(&failing));
    ensure!(
        String::from_utf8_lossy(&failing.stderr).contains("oops"),
        "{}",
        text(&failing)
    );
    ensure!(
        String::from_utf8_lossy(&failing.stderr).contains("command terminated with exit code 3"),
        "{}",
        text(&failing)
    );
    let missing = node.kubectl(&["exec", "talk", "-c", "main", "--", "/no/such/thing"]);
    ensure!(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr).contains("/no/such/thing"),
        "exec of a missing program: {}",
        text(&missing)
    );
    let bad = node.kubectl(&["exec", "talk", "-c", "nope", "--", "true"]);
    ensure!(
        String::from_utf8_lossy(&bad.stderr).contains("container nope is not valid for pod talk"),
        "exec -c nope: {}",
        text(&bad)
    );
    // stdin
    let piped = node.kubectl_with(
        "kubectl",
        &[
            "exec",
            "-i",
            "talk",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z",
        ],
        Some("shout\n"),
    );
    ensure!(
        String::from_utf8_lossy(&piped.stdout) == "SHOUT\n",
        "exec -i: {}",
        text(&piped)
    );
    // The same over SPDY.
    let spdy = kubectl_env(
        &node,
        "kubectl",
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
        &[
            "exec",
            "talk",
            "-c",
            "side",
            "--",
            "sh",
            "-c",
            "echo via spdy; exit 4",
        ],
    )
    .output()?;
    ensure!(
        spdy.status.code() == Some(4) && String::from_utf8_lossy(&spdy.stdout) == "via spdy\n",
        "exec over SPDY: {}",
        text(&spdy)
    );
    let spdy_in = kubectl_env(
        &node,
        "kubectl",
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
        &["exec", "-i", "talk", "-c", "main", "--", "cat"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    spdy_in
        .stdin
        .as_ref()
        .expect("stdin")
        .write_all(b"round trip\n")?;
    let spdy_in = {
        let mut c = spdy_in;
        drop(c.stdin.take());
        c.wait_with_output()?
    };
    ensure!(
        String::from_utf8_lossy(&spdy_in.stdout) == "round trip\n",
        "exec -i over SPDY: {}",
        text(&spdy_in)
    );

    // exec -it through a terminal (script(1) gives kubectl one)
    let script = node.kubectl_in_terminal(
        &[
            "exec",
            "-it",
            "talk",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "tty; stty size; echo $TERM",
        ],
        24,
        80,
        "",
    );
    let shown = String::from_utf8_lossy(&script.stdout);
    ensure!(
        shown.contains("/dev/pts/") && shown.contains("xterm"),
        "{}",
        text(&script)
    );

    // port-forward: one request, many at once, 100 MB checked, WebSocket and SPDY
    let hit = forward(&node, "kubectl", &[], "18080:8080", |port| {
        let out = node
            .net_command("curl")
            .args(["-s", "-m", "10", &format!("http://127.0.0.1:{port}/")])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    ensure!(hit.contains("You've hit web"), "{hit}");
    let parallel = forward(
        &node,
        "kubectl",
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
        "18081:8080",
        |port| {
            let url = format!("http://127.0.0.1:{port}/");
            let mut args = vec![
                "-s".to_owned(),
                "-m".into(),
                "20".into(),
                "--parallel".into(),
                "--parallel-max".into(),
                "20".into(),
            ];
            for _ in 0..40 {
                args.extend(["-o".to_owned(), "-".into(), url.clone()]);
            }
            let out = node.net_command("curl").args(&args).output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .matches("You've hit web")
                .count()
                .to_string())
        },
    )?;
    ensure!(
        parallel == "40",
        "{parallel} of 40 parallel requests answered"
    );
    wait_for("the 100 MB file", T, || {
        ok(
            &node,
            &["exec", "web", "-c", "blob", "--", "cat", "/srv/blob.sum"],
        )
        .ok()
        .filter(|s| s.len() > 64)
    })?;
    let want = ok(
        &node,
        &["exec", "web", "-c", "blob", "--", "cat", "/srv/blob.sum"],
    )?;
    let want = want
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    for (env, port) in [
        (vec![], "18082"),
        (vec![("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")], "18083"),
    ] {
        let got = forward(&node, "kubectl", &env, &format!("{port}:9090"), |port| {
            let out = node
                .net_command("sh")
                .args([
                    "-c",
                    &format!("curl -s -m 60 http://127.0.0.1:{port}/blob | sha256sum"),
                ])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned())
        })?;
        ensure!(
            got == want,
            "100 MB through port-forward ({env:?}): sha256 {got}, want {want}"
        );
    }
    Ok(())
}

/// Runs `kubectl port-forward web <ports>` while `check` uses the local port.
fn forward(
    node: &TestNode,
    binary: &str,
    env: &[(&str, &str)],
    ports: &str,
    check: impl Fn(&str) -> Result<String>,
) -> Result<String> {
    let local = ports.split(':').next().unwrap_or_default().to_owned();
    let log = node.dir.join(format!("pf-{local}.log"));
    let mut pf: Child = kubectl_env(node, binary, env, &["port-forward", "web", ports])
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            node.dir.join(format!("pf-{local}.err")),
        )?)
        .spawn()?;
    let ready = wait_for("port-forward to listen", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("Forwarding from 127.0.0.1"))
    });
    let result = ready.and_then(|_| check(&local));
    let _ = pf.kill();
    let _ = pf.wait();
    result.with_context(|| {
        std::fs::read_to_string(node.dir.join(format!("pf-{local}.err"))).unwrap_or_default()
    })
}

#[test]
fn exec_and_port_forward_with_kubectl_127_and_133() -> Result<()> {
    let node = TestNode::with_api()?;
    create(&node, PODS)?;
    running(&node, "web")?;
    for (binary, port) in [("kubectl.1.27", "18090"), ("kubectl.1.33", "18091")] {
        let out = kubectl_env(
            &node,
            binary,
            &[],
            &[
                "exec",
                "web",
                "-c",
                "blob",
                "--",
                "sh",
                "-c",
                "echo in; exit 2",
            ],
        )
        .output()?;
        ensure!(
            out.status.code() == Some(2) && String::from_utf8_lossy(&out.stdout) == "in\n",
            "{binary}: {}",
            text(&out)
        );
        wait_for(&format!("{binary}: logs"), T, || {
            let logs = kubectl_env(&node, binary, &[], &["logs", "web", "-c", "blob"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&logs.stdout)
                .contains("serving blob")
                .then_some(())
        })?;
        let hit = forward(&node, binary, &[], &format!("{port}:8080"), |port| {
            let out = node
                .net_command("curl")
                .args(["-s", "-m", "10", &format!("http://127.0.0.1:{port}/")])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
        ensure!(hit.contains("You've hit web"), "{binary}: {hit}");
    }
    Ok(())
}

/// kube-rs speaks kubelet's WebSocket protocols: `v4.channel.k8s.io` port-forward (2-byte port
/// preamble, channels 2i and 2i+1) and WebSocket exec, both through the built-in API.
#[test]
fn kube_rs_port_forward_and_exec() -> Result<()> {
    let node = TestNode::with_api()?;
    create(&node, PODS)?;
    running(&node, "web")?;
    let result = with_kube_pods(&node, |pods| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut pf = pods.portforward("web", &[8080]).await?;
        let mut stream = pf
            .take_stream(8080)
            .ok_or_else(|| anyhow::anyhow!("no stream for 8080"))?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        drop(stream);
        let _ = pf.join().await;
        let params = kube::api::AttachParams::default()
            .container("blob")
            .stdout(true)
            .stderr(false);
        let mut proc = pods
            .exec("web", ["sh", "-c", "echo from kube-rs"], &params)
            .await?;
        let mut out = proc.stdout().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut text = Vec::new();
        out.read_to_end(&mut text).await?;
        let status = proc
            .take_status()
            .ok_or_else(|| anyhow::anyhow!("no status"))?
            .await;
        Ok((
            String::from_utf8_lossy(&reply).into_owned(),
            format!(
                "{}|{:?}",
                String::from_utf8_lossy(&text),
                status.and_then(|s| s.status)
            ),
        ))
    })
    .with_context(|| node.agent_log())?;
    ensure!(
        result.0.contains("You've hit web"),
        "port-forward reply: {}",
        result.0
    );
    ensure!(
        result.1 == "from kube-rs\n|Some(\"Success\")",
        "exec: {}",
        result.1
    );
    Ok(())
}

/// `parallel` kube-rs clients in the node's network namespace each run `true` in the container
/// `count` times through the built-in API, one after another, checking each exit status.
fn kube_rs_execs(
    node: &TestNode,
    pod: &str,
    container: &str,
    parallel: usize,
    count: usize,
) -> Result<()> {
    let (pod, container) = (pod.to_owned(), container.to_owned());
    with_kube_pods(node, move |pods| async move {
        let one = |pods: kube::Api<k8s_openapi::api::core::v1::Pod>| {
            let (pod, container) = (pod.clone(), container.clone());
            async move {
                for i in 0..count {
                    use tokio::io::AsyncReadExt;
                    let params = kube::api::AttachParams::default()
                        .container(container.as_str())
                        .stdout(true)
                        .stderr(false);
                    let mut proc = pods.exec(&pod, ["true"], &params).await?;
                    let mut out = proc.stdout().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
                    let mut nothing = Vec::new();
                    out.read_to_end(&mut nothing).await?;
                    let status = proc
                        .take_status()
                        .ok_or_else(|| anyhow::anyhow!("no status"))?
                        .await
                        .and_then(|s| s.status);
                    proc.join().await?;
                    ensure!(status.as_deref() == Some("Success"), "exec {i}: {status:?}");
                }
                Ok::<(), anyhow::Error>(())
            }
        };
        let runs = (0..parallel).map(|_| one(pods.clone()));
        for result in futures_util::future::join_all(runs).await {
            result?;
        }
        Ok(())
    })
}

/// Runs `f` with a kube-rs `Api<Pod>` (namespace `default`) of the node's built-in API, on a
/// thread of its own inside the node's network namespace, where the API listens.
fn with_kube_pods<T, F, Fut>(node: &TestNode, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(kube::Api<k8s_openapi::api::core::v1::Pod>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let kubeconfig = node.kubeconfig();
    let netns = format!("/proc/{}/ns/net", node.reaper);
    std::thread::spawn(move || -> Result<T> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            let client = kube::Client::try_from(config)?;
            f(kube::Api::namespaced(client, "default")).await
        })
    })
    .join()
    .expect("kube-rs client thread")
}

/// The kubelet API itself on 10250: a client certificate or a bearer token that the API's
/// TokenReview accepts, nothing else; logs with kubelet's parameters.
#[test]
fn kubelet_api_takes_client_certificates_and_bearer_tokens() -> Result<()> {
    let node = TestNode::with_api()?;
    create(&node, PODS)?;
    let pod = running(&node, "talk")?;
    wait_for("some log lines", T, || {
        ok(&node, &["logs", "talk", "-c", "main"])
            .ok()
            .filter(|l| l.contains("line 3"))
    })?;
    let base = "https://127.0.0.1:10250";
    let token = std::fs::read_to_string(node.dir.join("root/pki/token"))?;
    let code = |extra: &[&str], path: &str| -> Result<String> {
        let out = node
            .api_curl(false)?
            .args(["-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("{base}{path}"))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for path in ["/healthz", "/pods", "/containerLogs/default/talk/main"] {
        // No certificate, no token or a wrong one: refused, nothing is readable.
        ensure!(code(&[], path)? == "401", "{path} without credentials");
        let wrong = "Authorization: Bearer not-the-token";
        ensure!(code(&["-H", wrong], path)? == "401", "{path}, wrong token");
        // A token the API's TokenReview accepts is enough, as with kubelet.
        let bearer = format!("Authorization: Bearer {}", token.trim());
        ensure!(
            code(&["-H", &bearer], path)? == "200",
            "{path} with a token"
        );
    }
    let get = |path: &str| -> Result<String> {
        let out = node
            .api_curl(true)?
            .args(["-k", "-f", &format!("{base}{path}")])
            .output()?;
        ensure!(out.status.success(), "{path}: {}", text(&out));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    ensure!(get("/healthz")? == "ok");
    let pods: Value = serde_json::from_str(&get("/pods")?)?;
    ensure!(
        pods["items"].as_array().is_some_and(|i| i
            .iter()
            .any(|p| p["metadata"]["uid"] == pod["metadata"]["uid"])),
        "{pods}"
    );
    let tail = get("/containerLogs/default/talk/main?tailLines=1&timestamps=true")?;
    ensure!(
        tail.lines().count() == 1 && tail.contains("Z line "),
        "{tail}"
    );
    let limited = get("/containerLogs/default/talk/main?limitBytes=5")?;
    ensure!(limited == "line ", "{limited}");
    let missing = node
        .api_curl(true)?
        .args([
            "-k",
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("{base}/containerLogs/default/nosuch/main"),
        ])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&missing.stdout).ends_with("404"),
        "{}",
        text(&missing)
    );
    Ok(())
}

/// `logs -f` across rotations, `logs --previous` after a restart, `attach`, and 1,000 execs
/// leaving nothing behind.
#[test]
fn follow_rotation_previous_attach_and_exec_cleanup() -> Result<()> {
    let mut node = TestNode::with_config(
        "node1",
        "containerLogMaxSize: 4Ki\ncontainerLogMaxFiles: 3\n",
    )?;
    node.start_agent()?;
    node.wait_api()?;
    // 100-byte lines, one every 10 ms: a 4 KiB file rotates every ~0.4 s.
    let chatty = "apiVersion: v1\nkind: Pod\nmetadata: {name: chatty}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'i=0; while [ $i -lt 400 ]; do printf \"%05d %093d\\n\" $i 0; i=$((i+1)); sleep 0.01; done; echo done; sleep 1; exit 1']\n";
    create(&node, chatty)?;
    running(&node, "chatty")?;
    let follow = kubectl_env(&node, "kubectl", &[], &["logs", "-f", "chatty"]).output()?;
    let lines: Vec<String> = String::from_utf8_lossy(&follow.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    ensure!(
        lines.last().map(String::as_str) == Some("done"),
        "logs -f did not reach the end: {} lines",
        lines.len()
    );
    // Every line from the moment kubectl attached, in order, none lost at a rotation.
    let numbers: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    ensure!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or reorder in followed lines"
    );
    ensure!(numbers.last() == Some(&399), "{:?}", numbers.last());
    // The container exits 1 and restarts: --previous shows the finished instance.
    wait_for("a restart", T, || {
        let p: Value =
            serde_json::from_str(&ok(&node, &["get", "pod", "chatty", "-o", "json"]).ok()?).ok()?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
    })?;
    let previous = ok(&node, &["logs", "chatty", "--previous", "--tail=1"])?;
    ensure!(previous == "done\n", "{previous}");
    ok(&node, &["delete", "pod", "chatty", "--grace-period=1"])?;

    // attach follows the container's output from now on.
    create(&node, PODS)?;
    running(&node, "talk")?;
    let mut attach = kubectl_env(&node, "kubectl", &[], &["attach", "talk", "-c", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = attach.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("line") {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let seen = reader.join().expect("attach reader");
    attach.kill()?;
    attach.wait()?;
    ensure!(seen.contains("line "), "attach: {seen}");

    // An exec whose client goes away is ended with it.
    let sleeping = || {
        node.processes().into_iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00")
        })
    };
    let mut long = kubectl_env(
        &node,
        "kubectl",
        &[],
        &["exec", "talk", "-c", "side", "--", "sleep", "1000"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    wait_for("the exec'd sleep", T, || sleeping().then_some(()))?;
    long.kill()?;
    long.wait()?;
    wait_for("the exec'd sleep to end with its stream", T, || {
        (!sleeping()).then_some(())
    })?;

    // Many execs: no process, descriptor or socket left behind.
    let agent_fds = || {
        std::fs::read_dir(format!(
            "/proc/{}/fd",
            node.agent.as_ref().map(|a| a.pid).unwrap_or(0)
        ))
        .map(|d| d.count())
        .unwrap_or(0)
    };
    let before_fds = agent_fds();
    let before_procs = node.processes().len();
    // 900 from kube-rs (WebSocket, four at a time) and 100 from kubectl processes.
    kube_rs_execs(&node, "talk", "side", 4, 225)?;
    let script = format!(
        "for i in $(seq 1 25); do {k} --kubeconfig {c} --cache-dir {h} exec talk -c side -- true || exit 1; done",
        k = kubectl_path("kubectl").display(),
        c = node.kubeconfig().display(),
        h = node.dir.join("home/cache-kubectl").display()
    );
    let mut loops = Vec::new();
    for _ in 0..4 {
        loops.push(
            node.net_command("sh")
                .args(["-c", &script])
                .env("HOME", node.dir.join("home"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?,
        );
    }
    for l in loops {
        let out = l.wait_with_output()?;
        ensure!(
            out.status.success(),
            "exec loop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("exec helpers to be gone", Duration::from_secs(10), || {
        (node.processes().len() <= before_procs).then_some(())
    })
    .with_context(|| {
        format!(
            "{} processes before, {} after",
            before_procs,
            node.processes().len()
        )
    })?;
    let after_fds = agent_fds();
    ensure!(
        after_fds <= before_fds + 5,
        "agent descriptors: {before_fds} before 1,000 execs, {after_fds} after"
    );
    let leftovers: Vec<_> = std::fs::read_dir(node.dir.join("run"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
        .collect();
    ensure!(
        leftovers.is_empty(),
        "exec error files left: {}",
        leftovers.len()
    );
    Ok(())
}

/// WebSocket exec whose stdin comes as text frames (channel byte, then the data), as the
/// official Python client's `write_stdin("...")` sends it: read as binary frames are.
#[test]
fn exec_stdin_in_websocket_text_frames_is_read() -> Result<()> {
    let node = TestNode::with_api()?;
    create(
        &node,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: texty}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}\n",
    )?;
    running(&node, "texty")?;
    node.api_curl(true)?; // writes the admin certificate and key to <node>/curl
    let certs = node.dir.join("curl");
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", node.reaper))?;
    let output = std::thread::spawn(move || -> Result<String> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut tls = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())?;
        tls.set_ca_file(certs.join("ca.crt"))?;
        tls.set_certificate_file(certs.join("admin.crt"), openssl::ssl::SslFiletype::PEM)?;
        tls.set_private_key_file(certs.join("admin.key"), openssl::ssl::SslFiletype::PEM)?;
        let tcp = std::net::TcpStream::connect("127.0.0.1:6443")?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let stream = tls.build().connect("127.0.0.1", tcp)?;
        let url = "wss://127.0.0.1:6443/api/v1/namespaces/default/pods/texty/exec?command=sh&command=-c&command=read%20x%3B%20echo%20got%20%24x&stdin=true&stdout=true";
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url)?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
        let (mut ws, _) = tungstenite::client::client(request, stream)
            .map_err(|e| anyhow::anyhow!("websocket handshake: {e}"))?;
        ws.send(tungstenite::Message::text("\u{0}hello\n"))?;
        let mut stdout = String::new();
        for _ in 0..100 {
            match ws.read()? {
                tungstenite::Message::Binary(data) if data.first() == Some(&1) => {
                    stdout.push_str(&String::from_utf8_lossy(&data[1..]));
                    if stdout.contains('\n') {
                        break;
                    }
                }
                tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
        Ok(stdout)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("websocket thread panicked"))??;
    ensure!(output.trim() == "got hello", "stdout: {output:?}");
    Ok(())
}
