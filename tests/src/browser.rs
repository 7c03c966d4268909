//! Headless Chromium inside a test node, driven over WebDriver (Debian's chromedriver and the
//! fantoccini client), for the dashboard's tests and benchmark.
//!
//! chromedriver and the browser it starts run in the node's namespaces, so they see only the
//! node's loopback (no outside network) and die with the node. The calling thread joins the
//! node's network namespace (`enter_network`), so the WebDriver client reaches chromedriver there.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::wd::WebDriverCompatibleCommand;
use serde_json::{json, Value};

use crate::{wait_for, workspace, TestNode};

/// The dashboard through `kubectl proxy` (`kubectl_proxy`), at the URL the Kubernetes notes give.
pub const PROXY: &str = "http://127.0.0.1:8001/api/v1/namespaces/kubernetes-dashboard/services/https:kubernetes-dashboard:/proxy/";

/// `kubectl proxy` on the node's loopback (port 8001), as a user runs it; the caller ends it.
pub fn kubectl_proxy(node: &TestNode) -> Result<Child> {
    let child = node
        .net_command(crate::kubectl_path("kubectl"))
        .arg("--kubeconfig")
        .arg(node.kubeconfig())
        .args(["proxy", "--port=8001"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut probe = node.net_command("bash");
    probe
        .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/8001"])
        .stderr(Stdio::null());
    wait_for("kubectl proxy listening", Duration::from_secs(30), || {
        probe.status().ok().filter(|s| s.success())
    })?;
    Ok(child)
}

/// The port chromedriver listens on, on the node's loopback.
const DRIVER_PORT: u16 = 9515;

/// Moves this thread into the node's network namespace: sockets it opens from now on are the
/// node's (a test thread is the test's own and ends with it).
pub fn enter_network(node: &TestNode) -> Result<()> {
    let ns = File::open(format!("/proc/{}/ns/net", node.reaper))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns into the node")?;
    Ok(())
}

pub struct Browser {
    driver: Child,
    pub client: fantoccini::Client,
    /// Where screenshots go (`target/test-artifacts/<suite>/`).
    artifacts: PathBuf,
}

impl Browser {
    /// Starts chromedriver in the node and opens a session of a new, empty browser profile.
    /// The calling thread must be in the node's network namespace.
    pub async fn start(node: &TestNode, suite: &str) -> Result<Browser> {
        let profile = node.dir.join("browser");
        std::fs::create_dir_all(&profile)?;
        let log = File::create(node.dir.join("chromedriver.log"))?;
        let driver = node
            .command("chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start chromedriver (Debian's chromium-driver)")?;
        let url = format!("http://127.0.0.1:{DRIVER_PORT}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", DRIVER_PORT)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The flags Chromium needs as root on a closed network (no background connections).
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .map_err(|e| anyhow!("WebDriver session: {e}"))?;
        let artifacts = workspace().join("target/test-artifacts").join(suite);
        std::fs::create_dir_all(&artifacts)?;
        Ok(Browser {
            driver,
            client,
            artifacts,
        })
    }

    /// Runs `script` (a function body returning a value) until it returns something other than
    /// null, false or an empty string, for `timeout` at most.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.client.execute(script, vec![]).await {
                Ok(v) if !matches!(&v, Value::Null | Value::Bool(false)) && v != "" => {
                    return Ok(v)
                }
                Ok(v) => v,
                Err(e) => json!(e.to_string()),
            };
            if Instant::now() > deadline {
                let text = self.page_text().await.unwrap_or_default();
                bail!("{what}: not within {timeout:?} (last: {last}); the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn page_text(&self) -> Result<String> {
        let v = self
            .client
            .execute("return document.body.innerText", vec![])
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a screenshot as `<name>.png` among the suite's artifacts.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// What the page logged at level SEVERE, but failed requests (a page may be refused what
    /// its token may not read): its JavaScript errors.
    pub async fn javascript_errors(&self) -> Result<Vec<String>> {
        let entries = self.client.issue_cmd(BrowserLog).await?;
        Ok(entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Ends the session (chromedriver closes the browser), then chromedriver, and waits until
    /// no browser process is left in the node.
    pub async fn close(mut self, node: &TestNode) -> Result<()> {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // The browser's processes end with their session; what remains after 10 s is ended by
        // pid (they are this test's).
        let left = || {
            node.processes()
                .into_iter()
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("chrom"))
                })
                .collect::<Vec<_>>()
        };
        if wait_for("the browser gone", Duration::from_secs(10), || {
            left().is_empty().then_some(())
        })
        .is_err()
        {
            for p in left() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            wait_for("the browser killed", Duration::from_secs(10), || {
                left().is_empty().then_some(())
            })?;
        }
        Ok(())
    }
}

/// ChromeDriver's browser console log (`POST /session/{id}/se/log`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
