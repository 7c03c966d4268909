//! A real registry (Debian's docker-registry) inside a test node's network namespace, on its
//! loopback, with the test images pushed to it by skopeo: plain HTTP, or TLS with a certificate
//! from a test CA made for it (openssl), with or without htpasswd basic auth.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::node::TestNode;
use crate::{test_images, wait_for};

/// How a test registry lets clients in.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Anonymous,
    /// htpasswd basic auth.
    Basic(&'a str, &'a str),
    /// Bearer tokens from a token service that takes this user and password.
    Token(&'a str, &'a str),
}

impl Auth<'_> {
    fn credentials(self) -> Option<String> {
        match self {
            Auth::Anonymous => None,
            Auth::Basic(u, p) | Auth::Token(u, p) => Some(format!("{u}:{p}")),
        }
    }
}

pub struct Registry {
    nsenter: Child,
    host_pid: i32,
    /// `127.0.0.1:<port>`, as seen from inside the node.
    pub address: String,
    /// `user:password` when the registry requires basic auth (htpasswd).
    credentials: Option<String>,
    /// Where it keeps its blobs (`docker/registry/v2/...`).
    data: std::path::PathBuf,
    /// The test CA that signed its certificate, when it serves TLS.
    pub ca: Option<std::path::PathBuf>,
    /// Its token service, for a registry with bearer-token auth.
    token: Option<crate::token::TokenServer>,
}

impl Registry {
    /// Starts a registry on the node's loopback (brought up first) at `port`.
    pub fn start(node: &TestNode, port: u16) -> Result<Registry> {
        Self::start_with(node, port, Auth::Anonymous, false)
    }

    /// A registry serving TLS with a certificate for 127.0.0.1 from a fresh test CA (`ca`),
    /// answering only to `user`/`password`.
    pub fn start_tls_with_auth(
        node: &TestNode,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<Registry> {
        Self::start_with(node, port, Auth::Basic(user, password), true)
    }

    /// A registry that answers only to `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(
        node: &TestNode,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<Registry> {
        Self::start_with(node, port, Auth::Basic(user, password), false)
    }

    /// A registry that wants bearer tokens, which a token service on `port + 100` issues to
    /// `user`/`password` (the protocol of Docker Hub and most hosted registries).
    pub fn start_with_token(
        node: &TestNode,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<Registry> {
        Self::start_with(node, port, Auth::Token(user, password), false)
    }

    fn start_with(node: &TestNode, port: u16, auth: Auth, tls: bool) -> Result<Registry> {
        let up = node
            .net_command("ip")
            .args(["link", "set", "lo", "up"])
            .output()?;
        if !up.status.success() {
            bail!("lo up: {}", String::from_utf8_lossy(&up.stderr));
        }
        let dir = node.dir.join(format!("registry-{port}"));
        std::fs::create_dir_all(&dir)?;
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.join("data").display()
        );
        let ca = if tls {
            let (ca, cert, key) = test_ca_and_certificate(&dir)?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            Some(ca)
        } else {
            None
        };
        let mut token = None;
        if let Auth::Token(user, password) = auth {
            let tls = dir.join("tls");
            if !tls.join("ca.crt").exists() {
                test_ca_and_certificate(&dir)?;
            }
            let token_port = port + 100;
            token = Some(crate::token::TokenServer::start(
                node.reaper,
                token_port,
                &tls.join("ca.key"),
                &tls.join("ca.crt"),
                user,
                password,
            )?);
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                crate::token::SERVICE,
                crate::token::ISSUER,
                tls.join("ca.crt").display()
            ));
        }
        if let Auth::Basic(user, password) = auth {
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
        // setpriv, nsenter and the registry are one process in turn (each execs the next); it
        // dies with this one even if the Registry is never dropped.
        let nsenter = std::process::Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "nsenter", "-t"])
            .arg(node.reaper.to_string())
            .args(["-n", "--", "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()?;
        let host_pid = nsenter.id() as i32;
        let credentials = auth.credentials();
        let registry = Registry {
            nsenter,
            host_pid,
            address,
            credentials,
            data: dir.join("data"),
            ca,
            token,
        };
        let scheme = if tls { "https" } else { "http" };
        // Any answer will do (a token registry says 401 to a request without a token).
        wait_for("the registry to listen", Duration::from_secs(10), || {
            let out = node
                .net_command("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{scheme}://{}/v2/", registry.address))
                .output()
                .ok()?;
            matches!(&out.stdout[..], b"200" | b"401").then_some(())
        })?;
        Ok(registry)
    }

    /// Tokens its token service has issued so far (0 without one).
    pub fn tokens_issued(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.issued())
    }

    /// The file holding a blob in the registry's storage (to corrupt it).
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes one of the test images (`busybox`, `kubia`, `multiarch`) as `<repository>:<tag>`;
    /// an image index is pushed whole, every platform's image with it.
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
        self.push_layout(node, &test_images().join(image), repository, tag, options)
    }

    /// Pushes the image of an OCI layout (tagged `latest`) as `<repository>:<tag>`.
    pub fn push_layout(
        &self,
        node: &TestNode,
        layout: &std::path::Path,
        repository: &str,
        tag: &str,
        options: &[&str],
    ) -> Result<()> {
        let source = format!("oci:{}:latest", layout.display());
        let target = format!("docker://{}/{repository}:{tag}", self.address);
        let out = node
            .net_command("skopeo")
            .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
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

/// A CA and a server certificate for 127.0.0.1 signed by it (P-256, one day), under `dir/tls`;
/// returns (ca.crt, server.crt, server.key).
fn test_ca_and_certificate(
    dir: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let p = |name: &str| tls.join(name).display().to_string();
    std::fs::write(tls.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=nodelet test CA",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([p("ca.key"), "-out".into(), p("ca.crt")])
        .collect(),
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([p("server.key"), "-out".into(), p("server.csr")])
        .collect(),
        ["x509", "-req", "-days", "1", "-in"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                p("server.csr"),
                "-CA".into(),
                p("ca.crt"),
                "-CAkey".into(),
                p("ca.key"),
                "-CAcreateserial".into(),
                "-extfile".into(),
                p("san.ext"),
                "-out".into(),
                p("server.crt"),
            ])
            .collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl").args(&args).output()?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok((
        tls.join("ca.crt"),
        tls.join("server.crt"),
        tls.join("server.key"),
    ))
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
