//! A real registry (Debian's docker-registry) inside a test node's network namespace, on its
//! loopback, with the test images pushed to it by skopeo.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::node::TestNode;
use crate::{test_images, wait_for};

pub struct Registry {
    nsenter: Child,
    host_pid: i32,
    /// `127.0.0.1:<port>`, as seen from inside the node.
    pub address: String,
    /// `user:password` when the registry requires basic auth (htpasswd).
    credentials: Option<String>,
}

impl Registry {
    /// Starts a registry on the node's loopback (brought up first) at `port`.
    pub fn start(node: &TestNode, port: u16) -> Result<Registry> {
        Self::start_with(node, port, None)
    }

    /// A registry that answers only to `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(
        node: &TestNode,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<Registry> {
        Self::start_with(node, port, Some((user, password)))
    }

    fn start_with(node: &TestNode, port: u16, auth: Option<(&str, &str)>) -> Result<Registry> {
        let up = node
            .net_command("ip")
            .args(["link", "set", "lo", "up"])
            .output()?;
        if !up.status.success() {
            bail!("lo up: {}", String::from_utf8_lossy(&up.stderr));
        }
        let dir = node.dir.join("registry");
        std::fs::create_dir_all(&dir)?;
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = std::process::Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.join("htpasswd"), &out.stdout)?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(&config, yaml)?;
        let nsenter = node
            .net_command("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()?;
        // nsenter without a PID namespace to enter execs the registry in place.
        let host_pid = nsenter.id() as i32;
        let credentials = auth.map(|(u, p)| format!("{u}:{p}"));
        let registry = Registry {
            nsenter,
            host_pid,
            address,
            credentials,
        };
        wait_for("the registry to listen", Duration::from_secs(10), || {
            let mut curl = node.net_command("curl");
            curl.args(["-sf", &format!("http://{}/v2/", registry.address)]);
            if let Some(c) = &registry.credentials {
                curl.args(["-u", c]);
            }
            let out = curl.output().ok()?;
            out.status.success().then_some(())
        })?;
        Ok(registry)
    }

    /// Pushes one of the test images (`busybox`, `kubia`) as `<repository>:<tag>`.
    pub fn push(&self, node: &TestNode, image: &str, repository: &str, tag: &str) -> Result<()> {
        self.push_with(node, image, repository, tag, &[])
    }

    /// Pushes with extra `skopeo copy` options (`--dest-compress-format zstd`, ...).
    pub fn push_with(
        &self,
        node: &TestNode,
        image: &str,
        repository: &str,
        tag: &str,
        options: &[&str],
    ) -> Result<()> {
        let source = format!("oci:{}:latest", test_images().join(image).display());
        let target = format!("docker://{}/{repository}:{tag}", self.address);
        let out = node
            .net_command("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(options)
            .args(
                self.credentials
                    .iter()
                    .flat_map(|c| ["--dest-creds".to_owned(), c.clone()]),
            )
            .args([&source, &target])
            .output()?;
        if !out.status.success() {
            bail!(
                "skopeo copy {source} {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.host_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nsenter.wait();
    }
}
