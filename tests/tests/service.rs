//! nodelet as systemd runs it: readiness, watchdog keep-alives and stopping told to
//! `$NOTIFY_SOCKET` (`Type=notify`), kubelet's healthz on 127.0.0.1:10248, `--version`; and
//! systemd's variables are not handed on to the pods' processes.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use nodelet_tests::{wait_for, TestNode};

/// The next notification that contains `what`, within `limit`.
fn hear(socket: &UnixDatagram, what: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))?;
        let Ok(n) = socket.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(what) {
            return Ok(text);
        }
    }
    anyhow::bail!("no {what} within {limit:?}")
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping_and_healthz_answers() -> Result<()> {
    let mut node = TestNode::new()?;
    let path = node.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    let path = path.to_string_lossy().into_owned();
    node.write_manifest("web.yaml", &nodelet_tests::sleeper_pod("web"));
    // A 2 s watchdog: keep-alives every second.
    node.start_agent_with_env(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "2000000")])?;
    let ready =
        hear(&socket, "READY=1", Duration::from_secs(30)).with_context(|| node.agent_log())?;
    ensure!(ready.contains("STATUS="), "{ready}");
    hear(&socket, "WATCHDOG=1", Duration::from_secs(5))?;
    hear(&socket, "WATCHDOG=1", Duration::from_secs(5))?;

    let curl = |url: &str| -> Result<(String, String)> {
        let out = node
            .net_command("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}", url])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl output")?;
        Ok((body.to_owned(), code.to_owned()))
    };
    ensure!(curl("http://127.0.0.1:10248/healthz")? == ("ok".into(), "200".into()));
    let (verbose, code) = curl("http://127.0.0.1:10248/healthz?verbose")?;
    ensure!(
        code == "200" && verbose.contains("[+]ping ok") && verbose.contains("[+]syncloop ok"),
        "{verbose}"
    );
    ensure!(curl("http://127.0.0.1:10248/healthz/syncloop")?.1 == "200");
    ensure!(curl("http://127.0.0.1:10248/nosuch")?.1 == "404");

    // The pod's shim got none of systemd's variables: it must not notify for the agent.
    let shim = wait_for("the static pod's shim", Duration::from_secs(60), || {
        nodelet_tests::shim_pids(&node).first().copied()
    })?;
    let environ = std::fs::read(format!("/proc/{shim}/environ"))?;
    let environ = String::from_utf8_lossy(&environ);
    ensure!(
        !environ.contains("NOTIFY_SOCKET") && !environ.contains("WATCHDOG_USEC"),
        "{environ}"
    );

    node.stop_agent(Signal::SIGTERM)?;
    hear(&socket, "STOPPING=1", Duration::from_secs(5))?;

    let version = node.nodelet(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    ensure!(version.starts_with("nodelet "), "{version}");
    node.start_agent()?;
    node.remove_manifest("web.yaml");
    wait_for("the static pod gone", Duration::from_secs(60), || {
        nodelet_tests::shim_pids(&node).is_empty().then_some(())
    })?;
    node.assert_clean()
}
