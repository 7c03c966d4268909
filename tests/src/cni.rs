//! Running reference CNI plugins by hand inside a test node, as a runtime would.

use std::fs;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::node::{child_of, TestNode};

/// A process that holds a fresh network namespace inside a test node: the "container" of a
/// reference CNI plugin run by hand. Killed by pid when dropped.
pub struct NetnsHolder {
    nsenter: Child,
    host_pid: i32,
    node_pid: i32,
}

impl NetnsHolder {
    /// The namespace as the node (its /proc) names it.
    pub fn node_path(&self) -> String {
        format!("/proc/{}/ns/net", self.node_pid)
    }

    /// The namespace as the host's /proc names it.
    pub fn host_path(&self) -> String {
        format!("/proc/{}/ns/net", self.host_pid)
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.host_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nsenter.wait();
    }
}

impl TestNode {
    pub fn netns_holder(&self) -> Result<NetnsHolder> {
        let nsenter = self
            .command("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()?;
        let host_pid = child_of(nsenter.id())?;
        let status = fs::read_to_string(format!("/proc/{host_pid}/status"))?;
        let node_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no NSpid for {host_pid}"))?;
        Ok(NetnsHolder {
            nsenter,
            host_pid,
            node_pid,
        })
    }

    /// The first plugin of the node's CNI config as a plugin receives it (with the list's name
    /// and version): what to feed the reference plugin binary.
    pub fn cni_plugin_config(&self, file: &str) -> Result<Value> {
        let list: Value =
            serde_json::from_slice(&fs::read(self.dir.join("cni/net.d").join(file))?)?;
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        Ok(plugin)
    }
}

/// Runs a CNI plugin (`cmd`, already placed in the right namespaces) for one operation on
/// container `id` in the namespace at `netns`, as a runtime would.
pub fn run_cni(
    mut cmd: Command,
    operation: &str,
    id: &str,
    netns: &str,
    config: &Value,
) -> Result<Output> {
    let mut child = cmd
        .env("CNI_COMMAND", operation)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(config.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("CNI {operation}: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(out)
}
