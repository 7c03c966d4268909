//! A test node: its namespaces, its agent, its pods, and the checks that nothing is left.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{nodelet_bin, shim_bin, test_images, wait_for};

static NODES: AtomicU32 = AtomicU32::new(0);

pub struct Agent {
    nsenter: Child,
    /// The agent's pid in the host's PID namespace.
    pub pid: i32,
}

/// The longest one kubectl command may take in a test, in seconds (for timeout(1)).
const KUBECTL_LIMIT: &str = "300";

pub struct TestNode {
    /// The node name; static pods are named `<pod>-<name>`.
    pub name: String,
    pub dir: PathBuf,
    pub cgroup_root: String,
    unshare: Child,
    /// pid 1 of the node, as the host sees it.
    pub reaper: i32,
    pub agent: Option<Agent>,
}

/// Exit code, stdout and stderr of a finished command, for failure messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl` is on PATH; the versioned ones (`kubectl.1.27`, ...) sit beside the Cloud SDK's.
pub fn kubectl_path(binary: &str) -> PathBuf {
    let sdk = Path::new("/usr/lib/google-cloud-sdk/bin").join(binary);
    if binary != "kubectl" && sdk.exists() {
        sdk
    } else {
        PathBuf::from(binary)
    }
}

pub(crate) fn child_of(pid: u32) -> Result<i32> {
    wait_for("a child process", Duration::from_secs(5), || {
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
    })
}

impl TestNode {
    /// A node called `node1` with the test images imported and no agent running yet.
    pub fn new() -> Result<TestNode> {
        Self::with_config("node1", "")
    }

    /// A node with its own name and extra configuration (YAML lines appended to the config).
    pub fn with_config(name: &str, extra: &str) -> Result<TestNode> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NODES.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("nodelet-it-{id}"));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["root", "run", "logs", "manifests", "host"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let cgroup_root = format!("/nodelet-it-{id}");
        // The built-in API's kubeconfig goes in the node's directory, unless `extra` configures
        // the API itself (`apiServer: {enabled: false}` for a node of static pods only).
        let api = if extra.contains("apiServer:") {
            String::new()
        } else {
            format!("apiServer:\n  kubeconfig: {}/kubeconfig\n", dir.display())
        };
        // Image GC only where a test asks for it: a full disk on the machine running the tests
        // must not take images from tests that expect them.
        let gc = if extra.contains("imageGC") {
            ""
        } else {
            "imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 100\n"
        };
        let config = format!(
            "rootDir: {d}/root\nrunDir: {d}/run\npodLogsDir: {d}/logs\nstaticPodPath: {d}/manifests\n\
             cgroupRoot: {cgroup_root}\nhostnameOverride: {name}\nfileCheckFrequency: 2s\n\
             cniConfDir: {d}/cni/net.d\ncniDataDir: {d}/cni/data\nregistryCertsDir: {d}/certs.d\n\
             {gc}{api}{extra}",
            d = dir.display()
        );
        fs::write(dir.join("config.yaml"), config)?;
        let images = test_images();
        for image in ["busybox", "kubia"] {
            let out = Command::new(nodelet_bin())
                .args(["--root-dir"])
                .arg(dir.join("root"))
                .args(["image", "import"])
                .arg(images.join(image))
                .output()?;
            if !out.status.success() {
                bail!("import {image}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // setpriv --pdeathsig: if this process dies without dropping the node (a panic in
        // another thread, a signal, a reader that closed its pipe), unshare is killed with it,
        // and the reaper (its own pdeathsig) and so the whole node along. Not `unshare
        // --kill-child`: util-linux's unshare then prints "sigprocmask unblock failed" when the
        // node's pid 1 is killed.
        let unshare = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "KILL",
                "unshare",
                "--mount",
                "--net",
                "--pid",
                // Its own hostname and IPC too: a hostNetwork/hostIPC pod shares the node's.
                "--uts",
                "--ipc",
                "--fork",
                "--propagation",
                "private",
                "--mount-proc",
            ])
            .arg(shim_bin())
            .arg("reaper")
            .stdin(Stdio::null())
            .spawn()
            .context("start test node (unshare)")?;
        let reaper = child_of(unshare.id())?;
        // A machine's loopback is up; the built-in API listens there.
        let up = Command::new("nsenter")
            .args([
                "-t",
                &reaper.to_string(),
                "-n",
                "--",
                "ip",
                "link",
                "set",
                "lo",
                "up",
            ])
            .output()?;
        if !up.status.success() {
            bail!("lo up: {}", String::from_utf8_lossy(&up.stderr));
        }
        Ok(TestNode {
            name: name.to_owned(),
            dir,
            cgroup_root,
            unshare,
            reaper,
            agent: None,
        })
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// A node with its agent running and its built-in API answering.
    pub fn with_api() -> Result<TestNode> {
        let mut node = TestNode::new()?;
        node.start_agent()?;
        node.wait_api()?;
        Ok(node)
    }

    /// Waits (a minute at most) until no pod process is left, then (30 s at most) until nothing
    /// of any pod is (`assert_clean`).
    pub fn settled(&self) -> Result<()> {
        crate::wait_for(
            "every pod's processes gone",
            Duration::from_secs(60),
            || self.processes().is_empty().then_some(()),
        )?;
        // A finished pod leaves the API at once (kube-apiserver deletes a terminal pod without
        // grace), before the node has torn it down: give the teardown its time, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.assert_clean() {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The running agent's pid, as the host sees it.
    pub fn agent_pid(&self) -> i32 {
        self.agent.as_ref().expect("agent running").pid
    }

    /// A command that runs inside the node's namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.reaper.to_string(), "-m", "-n", "-p", "--"])
            .arg(program);
        cmd
    }

    /// A command in the node's network namespace only (it still sees the host's /proc).
    pub fn net_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.reaper.to_string(), "-n", "--"])
            .arg(program);
        cmd
    }

    /// Runs a nodelet subcommand inside the node.
    pub fn nodelet(&self, args: &[&str]) -> Output {
        self.command(nodelet_bin())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .expect("run nodelet")
    }

    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with_env(&[])
    }

    /// Starts the agent with these variables added to its environment (as systemd adds
    /// `NOTIFY_SOCKET`).
    pub fn start_agent_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        assert!(self.agent.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let nsenter = self
            .command(nodelet_bin())
            .arg("--config")
            .arg(self.config())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let pid = child_of(nsenter.id())?;
        self.agent = Some(Agent { nsenter, pid });
        let socket = self.dir.join("run/nodelet.sock");
        wait_for(
            "the agent's control socket",
            Duration::from_secs(10),
            || UnixStream::connect(&socket).ok(),
        )?;
        Ok(())
    }

    /// Stops the agent with a signal (SIGKILL or SIGTERM) and waits for it.
    pub fn stop_agent(&mut self, signal: nix::sys::signal::Signal) -> Result<()> {
        let mut agent = self
            .agent
            .take()
            .ok_or_else(|| anyhow!("no agent running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid), signal)?;
        agent.nsenter.wait()?;
        Ok(())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Runs the default `kubectl` against the node's built-in API.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with("kubectl", args, None)
    }

    /// Runs `binary` (`kubectl`, `kubectl.1.27`, ...) against the node's built-in API, with its
    /// own discovery cache and optional standard input; killed after `KUBECTL_LIMIT` (a
    /// stream that never ends fails the test instead of hanging it).
    pub fn kubectl_with(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let home = self.dir.join("home");
        let _ = fs::create_dir_all(&home);
        let mut cmd = self.net_command("timeout");
        cmd.args(["--kill-after=5", KUBECTL_LIMIT])
            .arg(kubectl_path(binary))
            .env("HOME", &home)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(home.join(format!("cache-{binary}")))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// Runs kubectl on a terminal of `rows` x `columns` (script(1) gives it one), as a user at a
    /// shell would (`-it`); `input` is typed into that terminal.
    pub fn kubectl_in_terminal(
        &self,
        args: &[&str],
        rows: u16,
        columns: u16,
        input: &str,
    ) -> Output {
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let home = self.dir.join("home");
        let _ = fs::create_dir_all(&home);
        let mut line = format!(
            "stty rows {rows} cols {columns}; exec {} --kubeconfig {} --cache-dir {}",
            quote(&kubectl_path("kubectl").display().to_string()),
            quote(&self.kubeconfig().display().to_string()),
            quote(&home.join("cache-kubectl").display().to_string()),
        );
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let mut child = self
            .net_command("timeout")
            .env("HOME", &home)
            .args(["120", "script", "-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run script");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("type into the terminal");
        // Open until kubectl ends: script(1) takes the end of its input as the end of the session.
        let out = child.wait_with_output().expect("wait for script");
        drop(stdin);
        out
    }

    /// `curl` in the node's network namespace, trusting the built-in API's CA and, with `auth`,
    /// presenting the admin client certificate from the kubeconfig.
    /// The built-in API's URL, from the node's kubeconfig.
    pub fn api_url(&self) -> String {
        let kubeconfig = fs::read_to_string(self.kubeconfig()).unwrap_or_default();
        kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap_or("https://127.0.0.1:6443")
            .trim()
            .to_owned()
    }

    pub fn api_curl(&self, auth: bool) -> Result<Command> {
        use base64::Engine as _;
        let dir = self.dir.join("curl");
        fs::create_dir_all(&dir)?;
        let kubeconfig = fs::read_to_string(self.kubeconfig())?;
        for (field, file) in [
            ("certificate-authority-data", "ca.crt"),
            ("client-certificate-data", "admin.crt"),
            ("client-key-data", "admin.key"),
        ] {
            let b64 = kubeconfig
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
                .ok_or_else(|| anyhow!("kubeconfig has no {field}"))?;
            let pem = base64::engine::general_purpose::STANDARD.decode(b64.trim())?;
            // Atomically: curls already running may be reading the previous copy.
            let tmp = dir.join(format!(".{file}.{}", std::process::id()));
            fs::write(&tmp, pem)?;
            fs::rename(&tmp, dir.join(file))?;
        }
        let mut cmd = self.net_command("curl");
        cmd.args(["-s", "--cacert"]).arg(dir.join("ca.crt"));
        if auth {
            cmd.arg("--cert")
                .arg(dir.join("admin.crt"))
                .arg("--key")
                .arg(dir.join("admin.key"));
        }
        Ok(cmd)
    }

    /// Runs kubectl and requires success; returns its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!("kubectl {}: {}", args.join(" "), describe_output(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl create -f -` of `yaml` (plus `extra` arguments); returns what kubectl printed.
    pub fn kubectl_create(&self, yaml: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["create", "-f", "-"];
        args.extend(extra);
        let out = self.kubectl_with("kubectl", &args, Some(yaml));
        if !out.status.success() {
            bail!("kubectl create -f: {}", describe_output(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Waits until the built-in API answers with the node registered.
    pub fn wait_api(&self) -> Result<()> {
        wait_for(
            "the built-in API and the node's registration",
            Duration::from_secs(30),
            || {
                let out = self.kubectl(&["get", "node", &self.name, "-o", "name"]);
                out.status.success().then_some(())
            },
        )
        .with_context(|| format!("agent log:\n{}", self.agent_log()))
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) {
        // Write then rename, as a careful operator (or a config tool) would.
        let tmp = self.dir.join("manifests").join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml).expect("write manifest");
        fs::rename(&tmp, self.dir.join("manifests").join(file)).expect("move manifest");
    }

    pub fn remove_manifest(&self, file: &str) {
        fs::remove_file(self.dir.join("manifests").join(file)).expect("remove manifest");
    }

    /// The agent's pods (`Pod` objects with status), through its control socket.
    pub fn pods(&self) -> Result<Vec<Value>> {
        let mut stream = UnixStream::connect(self.dir.join("run/nodelet.sock"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"{\"op\":\"pods\"}\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        let v: Value = serde_json::from_str(&line)?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The pod named `name` (static pods get `-<node name>` appended), if the agent has it.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-{}", self.name);
        self.pods()
            .ok()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
    }

    /// The pod named exactly `name` (an API pod), if the agent has it.
    pub fn api_pod(&self, name: &str) -> Option<Value> {
        self.pods()
            .ok()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
    }

    /// Waits until `check` holds for the pod, returning the pod.
    pub fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_for(&format!("pod {name}: {what}"), timeout, || {
            self.pod(name).filter(|p| check(p))
        })
        .with_context(|| {
            format!(
                "last seen: {:#}\nagent log:\n{}",
                self.pod(name).unwrap_or_default(),
                self.agent_log()
            )
        })
    }

    pub fn wait_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("pod {name} to be deleted"), timeout, || {
            self.pod(name).is_none().then_some(())
        })
    }

    /// The status of one container of a pod.
    pub fn container_status(pod: &Value, container: &str) -> Value {
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container).cloned())
            .unwrap_or_default()
    }

    /// The host pid of a running container's first process.
    pub fn container_pid(&self, pod: &Value, container: &str) -> Result<i32> {
        let id = Self::container_status(pod, container)["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("nodelet://"))
            .ok_or_else(|| anyhow!("container {container} has no id"))?
            .to_owned();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let record = self
            .dir
            .join("run/pods")
            .join(uid)
            .join("containers")
            .join(format!("{id}.json"));
        let record: Value = serde_json::from_slice(&fs::read(&record)?)?;
        let ns_pid = record["pid"]
            .as_i64()
            .ok_or_else(|| anyhow!("no pid in record"))?;
        self.host_pid(ns_pid as i32)
    }

    /// Maps a pid of the node's PID namespace to the host's.
    fn host_pid(&self, ns_pid: i32) -> Result<i32> {
        for entry in fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid: Vec<i32> = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|l| {
                    l.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            // NSpid: host pid, node pid, [container pid]
            if nspid.get(1) == Some(&ns_pid) && self.in_node(pid) {
                return Ok(pid);
            }
        }
        bail!("no process {ns_pid} in the test node")
    }

    /// Whether a host pid belongs to this node (its PID namespace or one nested in it).
    fn in_node(&self, pid: i32) -> bool {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let depth = |s: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|l| l.split_whitespace().count())
        };
        let mine = fs::read_to_string(format!("/proc/{}/status", self.reaper)).unwrap_or_default();
        let (Some(d), Some(root)) = (depth(&status), depth(&mine)) else {
            return false;
        };
        if d < root {
            return false;
        }
        // Walk up the parents until the reaper, the agent (whose parent is nsenter, outside),
        // or the host init.
        let agent = self.agent.as_ref().map(|a| a.pid);
        let mut p = pid;
        for _ in 0..64 {
            if p == self.reaper || Some(p) == agent {
                return true;
            }
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or("");
            match after
                .split_whitespace()
                .nth(1)
                .and_then(|pp| pp.parse().ok())
            {
                Some(pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    }

    /// Whether a container of the pod is running.
    pub fn running(pod: &Value, container: &str) -> bool {
        Self::container_status(pod, container)["state"]["running"].is_object()
    }

    /// `nodelet logs` of a container of a static pod (named `<pod>-<node>`), stderr after stdout.
    pub fn logs(&self, pod: &str, container: &str) -> String {
        let out = self.nodelet(&["logs", &format!("{pod}-{}", self.name), "-c", container]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The IP the node reports for a pod.
    pub fn pod_ip(pod: &Value) -> String {
        pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs a command inside a running container (all of its namespaces, as `kubectl exec`).
    pub fn exec(&self, pod: &Value, container: &str, args: &[&str]) -> Result<Output> {
        let pid = self.container_pid(pod, container)?;
        Ok(Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "--"])
            .args(args)
            .output()?)
    }

    /// Host pids of every process in the node besides its pid 1 and the agent.
    pub fn processes(&self) -> Vec<i32> {
        let agent = self.agent.as_ref().map(|a| a.pid);
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|p| *p != self.reaper && Some(*p) != agent && self.in_node(*p))
            .collect()
    }

    /// Checks that no pod left anything: processes, mounts, cgroups, state, logs.
    pub fn assert_clean(&self) -> Result<()> {
        let procs = self.processes();
        if !procs.is_empty() {
            let names: Vec<String> = procs
                .iter()
                .map(|p| {
                    fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                })
                .collect();
            bail!("processes left in the node: {names:?}");
        }
        let mountinfo = fs::read_to_string(format!("/proc/{}/mountinfo", self.reaper))?;
        let dir = self.dir.display().to_string();
        // The node's own tmpfs for API volumes stays (as long as the node does); nothing of a
        // pod's may.
        let api_volumes = format!(" {dir}/run/volumes ");
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(&dir) && !l.contains(&api_volumes))
            .collect();
        if !mounts.is_empty() {
            bail!("mounts left in the node: {mounts:#?}");
        }
        for (what, sub) in [
            ("shim state", "run/pods"),
            ("API volumes", "run/volumes"),
            ("pod state", "root/pods"),
            ("pod logs", "logs"),
            ("container log links", "containers"),
        ] {
            let left: Vec<_> = fs::read_dir(self.dir.join(sub))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            if !left.is_empty() {
                bail!("{what} left in {sub}: {left:?}");
            }
        }
        let veths = self
            .command("ip")
            .args(["-o", "link", "show", "type", "veth"])
            .output()?;
        let veths: Vec<String> = String::from_utf8_lossy(&veths.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            })
            .filter(|n| n.starts_with("veth"))
            .collect();
        if !veths.is_empty() {
            bail!("pod veths left in the node: {veths:?}");
        }
        for network in fs::read_dir(self.dir.join("cni/data/networks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let held: Vec<String> = fs::read_dir(network.path())?
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                        .map(str::to_owned)
                })
                .collect();
            if !held.is_empty() {
                bail!(
                    "addresses still allocated in {}: {held:?}",
                    network.path().display()
                );
            }
        }
        for controller in ["memory", "cpu", "pids", "devices", ""] {
            let kubepods = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(self.cgroup_root.trim_start_matches('/'))
                .join("kubepods");
            let pods = find_pod_cgroups(&kubepods);
            if !pods.is_empty() {
                bail!("cgroups left: {pods:?}");
            }
        }
        Ok(())
    }
}

fn find_pod_cgroups(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name().to_string_lossy().starts_with("pod") {
                out.push(path.clone());
            }
            out.extend(find_pod_cgroups(&path));
        }
    }
    out
}

fn remove_cgroup_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // pid 1 of the node first: the kernel then kills every process of the node, and the
        // unshare and nsenter processes we started exit and are reaped here. SIGTERM ends the
        // reaper cleanly (unshare complains of a child killed by SIGKILL); SIGKILL if it must.
        let reaper = nix::unistd::Pid::from_raw(self.reaper);
        let _ = nix::sys::signal::kill(reaper, nix::sys::signal::Signal::SIGTERM);
        let ended = wait_for("the node's pid 1 to end", Duration::from_secs(5), || {
            self.unshare.try_wait().ok().flatten()
        });
        if ended.is_err() {
            let _ = nix::sys::signal::kill(reaper, nix::sys::signal::Signal::SIGKILL);
            let _ = self.unshare.wait();
        }
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.nsenter.wait();
        }
        for controller in ["memory", "cpu", "cpuacct", "pids", "devices", ""] {
            remove_cgroup_tree(
                &Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(self.cgroup_root.trim_start_matches('/')),
            );
        }
        if std::env::var_os("NODELET_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
