//! The agent's configuration: one KubeletConfiguration-like YAML file (camelCase keys, unknown keys
//! rejected by name) with command-line flags on top. Every path is configurable, which is what lets
//! tests run many isolated agents on one machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub const DEFAULT_CONFIG: &str = "/etc/nodelet/config.yaml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Accepted so kubelet-style files (`kind: KubeletConfiguration`) load as they are.
    pub kind: Option<String>,
    pub api_version: Option<String>,
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub static_pod_path: PathBuf,
    /// Cgroup under which `kubepods/...` is created, relative to each hierarchy's root.
    pub cgroup_root: String,
    pub hostname_override: Option<String>,
    pub node_labels: BTreeMap<String, String>,
    pub kubeconfig: Option<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// This node's pod network, used for the default CNI config when none exists.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    /// This node's address on the network between nodes (reported as the pods' hostIP).
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<String>,
    /// Other nodes' pod networks and addresses: nodelet keeps a route to each (host-gw).
    pub static_peers: Vec<Peer>,
    /// How often the static pod directory is rescanned besides inotify.
    #[serde(deserialize_with = "duration")]
    pub file_check_frequency: Duration,
    /// kubelet's `syncFrequency`: how often a pod is looked at with nothing having changed
    /// (container exits, spec, object and probe changes wake it at once), with up to half
    /// again of jitter, as kubelet's workers have.
    #[serde(deserialize_with = "duration")]
    pub sync_frequency: Duration,
    /// The resolver file copied into pods with dnsPolicy Default (and ClusterFirst without cluster DNS).
    pub resolv_conf: PathBuf,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// A container's log file is rotated when it reaches this size (a quantity, e.g. `10Mi`).
    pub container_log_max_size: String,
    /// Log files kept per container instance, the live one included.
    pub container_log_max_files: usize,
    /// kubelet's `podPidsLimit`: processes and threads a pod may have at once (its cgroup's
    /// `pids.max`); -1 for no limit. kubelet's default is -1; nodelet's is 4096, so that a fork
    /// bomb in one pod cannot take the node's pid space.
    pub pod_pids_limit: i64,
    /// kubelet's `seccompDefault`: containers that ask for no seccomp profile get
    /// `RuntimeDefault` instead of running unconfined.
    pub seccomp_default: bool,
    /// kubelet's `allowedUnsafeSysctls`: sysctls (or `prefix*` patterns) pods may set besides
    /// the safe ones.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// kubelet's `maxPods`: pods the node runs at once (its `pods` capacity); one more is
    /// rejected at admission (`OutOfpods`).
    pub max_pods: usize,
    /// Registries (`host` or `host:port`) spoken to over plain HTTP; those on 127.0.0.0/8 always are.
    pub insecure_registries: Vec<String>,
    /// A docker `config.json` with registry credentials, searched before `<rootDir>/config.json`,
    /// `/var/lib/kubelet/config.json` and `$HOME/.docker/config.json`.
    pub registry_credentials_file: Option<PathBuf>,
    /// Mirrors per registry (`docker.io: [mirror.lan:5000]`), tried in order before the registry.
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Extra CAs per registry, Docker's layout: `<dir>/<host[:port]>/*.crt`.
    pub registry_certs_dir: PathBuf,
    /// Image garbage collection: when the image filesystem is fuller than the high threshold
    /// (percent), unused images are removed, least recently used first, down to the low one.
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: u8,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: u8,
    /// Images younger than this (since pulled or last used) are never collected.
    #[serde(deserialize_with = "duration", rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Duration,
    /// The built-in Kubernetes API, served when no `kubeconfig` names another API server.
    #[serde(rename = "apiServer")]
    pub api_server: ApiServerConfig,
    /// The kubelet API (logs, exec, attach, port-forward): its address and port (0: off).
    pub address: std::net::IpAddr,
    pub port: u16,
    /// Its serving certificate; made at first start (signed by `<rootDir>/pki/ca.crt`) if unset.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub authentication: Authentication,
    /// kubelet's plain-HTTP health endpoint (`/healthz`), for systemd, load balancers and
    /// `curl`: `healthzBindAddress` (default 127.0.0.1) and `healthzPort` (10248; 0: off).
    pub healthz_bind_address: std::net::IpAddr,
    pub healthz_port: u16,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Authentication {
    pub x509: X509Authentication,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct X509Authentication {
    /// CA bundle that signs the clients of the kubelet API (kube-apiserver's
    /// `--kubelet-client-certificate`); default: the built-in API's CA.
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiServerConfig {
    pub enabled: bool,
    /// Where it listens (HTTPS).
    pub address: std::net::SocketAddr,
    /// Where the admin kubeconfig for it is written (mode 0600).
    pub kubeconfig: PathBuf,
    /// The dashboard (`/dashboard/`, and the `kubernetes-dashboard` Service's proxy).
    pub dashboard: bool,
    /// Where the dashboard's terminal (xterm.js, from npm) is installed; unset, the first of
    /// `<binary's dir>/../dashboard`, `/usr/share/nodelet/dashboard`,
    /// `/usr/local/share/nodelet/dashboard` that has it.
    pub dashboard_assets: Option<PathBuf>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            enabled: true,
            address: ([127, 0, 0, 1], 6443).into(),
            kubeconfig: "/etc/nodelet/kubeconfig".into(),
            dashboard: true,
            dashboard_assets: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kind: None,
            api_version: None,
            root_dir: "/var/lib/nodelet".into(),
            run_dir: "/run/nodelet".into(),
            pod_logs_dir: "/var/log/pods".into(),
            static_pod_path: "/etc/nodelet/manifests".into(),
            cgroup_root: "/".into(),
            hostname_override: None,
            node_labels: BTreeMap::new(),
            kubeconfig: None,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_data_dir: "/var/lib/cni".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            pod_cidr: "10.244.0.0/24".into(),
            node_ip: None,
            static_peers: Vec::new(),
            file_check_frequency: Duration::from_secs(20),
            sync_frequency: Duration::from_secs(60),
            resolv_conf: "/etc/resolv.conf".into(),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            container_log_max_size: "10Mi".into(),
            container_log_max_files: 5,
            pod_pids_limit: 4096,
            seccomp_default: false,
            allowed_unsafe_sysctls: Vec::new(),
            max_pods: 110,
            insecure_registries: Vec::new(),
            registry_credentials_file: None,
            registry_mirrors: BTreeMap::new(),
            registry_certs_dir: "/etc/nodelet/certs.d".into(),
            image_gc_high_threshold_percent: 85,
            image_gc_low_threshold_percent: 80,
            image_minimum_gc_age: Duration::from_secs(120),
            api_server: ApiServerConfig::default(),
            address: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: 10250,
            healthz_bind_address: [127, 0, 0, 1].into(),
            healthz_port: 10248,
            tls_cert_file: None,
            tls_private_key_file: None,
            authentication: Authentication::default(),
        }
    }
}

/// Another node of the flat pod network.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: String,
}

/// Flags that override the file, named as kubelet's where kubelet has one.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// Configuration file (YAML, KubeletConfiguration-like). Default: /etc/nodelet/config.yaml if present.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, global = true)]
    pub root_dir: Option<PathBuf>,
    #[arg(long, global = true)]
    pub run_dir: Option<PathBuf>,
    #[arg(long, global = true)]
    pub pod_logs_dir: Option<PathBuf>,
    /// Static pod manifest directory (kubelet's --pod-manifest-path).
    #[arg(long, global = true)]
    pub pod_manifest_path: Option<PathBuf>,
    #[arg(long, global = true)]
    pub cgroup_root: Option<String>,
    #[arg(long, global = true)]
    pub hostname_override: Option<String>,
    /// Comma-separated key=value labels for this node.
    #[arg(long, global = true, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's pod CIDR (for the default CNI configuration).
    #[arg(long, global = true)]
    pub pod_cidr: Option<String>,
    #[arg(long, global = true)]
    pub node_ip: Option<String>,
}

impl Config {
    /// Loads the file named by `--config` (or the default file if it exists) and applies flags.
    pub fn load(flags: &Flags) -> Result<Config, Error> {
        let mut config = match &flags.config {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG))?
            }
            None => Config::default(),
        };
        config.apply(flags)?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| Error::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML; errors name the key path (`fileCheckFrequency: invalid duration "x"`).
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// What one field cannot say alone: thresholds in order, mirrors that parse.
    fn validate(&self) -> Result<(), String> {
        let (high, low) = (
            self.image_gc_high_threshold_percent,
            self.image_gc_low_threshold_percent,
        );
        if high > 100 {
            return Err(format!("imageGCHighThresholdPercent: {high} is over 100"));
        }
        if low > high {
            return Err(format!(
                "imageGCLowThresholdPercent: {low} is above imageGCHighThresholdPercent ({high})"
            ));
        }
        for (registry, mirrors) in &self.registry_mirrors {
            for mirror in mirrors {
                crate::images::registry::parse_mirror(mirror)
                    .map_err(|e| format!("registryMirrors.{registry}: {e}"))?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, flags: &Flags) -> Result<(), Error> {
        let set = |target: &mut PathBuf, value: &Option<PathBuf>| {
            if let Some(v) = value {
                *target = v.clone();
            }
        };
        set(&mut self.root_dir, &flags.root_dir);
        set(&mut self.run_dir, &flags.run_dir);
        set(&mut self.pod_logs_dir, &flags.pod_logs_dir);
        set(&mut self.static_pod_path, &flags.pod_manifest_path);
        if let Some(cg) = &flags.cgroup_root {
            self.cgroup_root = cg.clone();
        }
        if flags.hostname_override.is_some() {
            self.hostname_override = flags.hostname_override.clone();
        }
        if flags.kubeconfig.is_some() {
            self.kubeconfig = flags.kubeconfig.clone();
        }
        if let Some(cidr) = &flags.pod_cidr {
            self.pod_cidr = cidr.clone();
        }
        if flags.node_ip.is_some() {
            self.node_ip = flags.node_ip.clone();
        }
        for label in &flags.node_labels {
            let (k, v) = label.split_once('=').ok_or_else(|| Error::Invalid {
                path: "--node-labels".into(),
                message: format!("label {label:?} is not key=value"),
            })?;
            self.node_labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(())
    }

    /// The node's name: `hostnameOverride`, else the machine's hostname, lower-cased as kubelet does.
    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .to_lowercase()
    }
}

/// Go-style durations as kubelet writes them: `20s`, `1m30s`, `500ms`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubelet_style_keys() {
        let c = Config::from_yaml(
            "kind: KubeletConfiguration\nrootDir: /tmp/r\nstaticPodPath: /tmp/m\nfileCheckFrequency: 1m30s\nclusterDNS: [10.96.0.10]\n",
        )
        .unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/tmp/r"));
        assert_eq!(c.static_pod_path, PathBuf::from("/tmp/m"));
        assert_eq!(c.file_check_frequency, Duration::from_secs(90));
        assert_eq!(c.cluster_dns, vec!["10.96.0.10"]);
        assert_eq!(c.run_dir, PathBuf::from("/run/nodelet"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::from_yaml("rootDir: /x\npodManifestDir: /y\n").unwrap_err();
        assert!(e.contains("unknown field `podManifestDir`"), "{e}");
        let e = Config::from_yaml("fileCheckFrequency: soon\n").unwrap_err();
        assert!(
            e.starts_with("fileCheckFrequency: invalid duration \"soon\""),
            "{e}"
        );
        let e = Config::from_yaml("imageGCHighThresholdPercent: 70\n").unwrap_err();
        assert!(
            e.contains("imageGCLowThresholdPercent: 80 is above imageGCHighThresholdPercent (70)"),
            "{e}"
        );
        let e = Config::from_yaml("registryMirrors: {docker.io: ['ftp://m']}\n").unwrap_err();
        assert!(
            e.starts_with("registryMirrors.docker.io: mirror \"ftp://m\""),
            "{e}"
        );
    }

    #[test]
    fn flags_override_file() {
        let mut c = Config::from_yaml("rootDir: /from-file\n").unwrap();
        let flags = Flags {
            root_dir: Some("/from-flag".into()),
            node_labels: vec!["zone=a".into(), "disk=ssd".into()],
            ..Flags::default()
        };
        c.apply(&flags).unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.node_labels.get("disk").map(String::as_str), Some("ssd"));
        let bad = Flags {
            node_labels: vec!["nolabel".into()],
            ..Flags::default()
        };
        assert!(c.apply(&bad).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
