//! Running CNI plugin binaries, for any configuration nodelet does not do natively: ADD, DEL and
//! CHECK as the CNI spec and libcni do them (environment, stdin config with `prevResult` chaining,
//! errors on stdout), and libcni's result cache so CNI tools can find and clean up after us.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nodelet_cni_config::config::WRITE_VERSION;
use nodelet_cni_config::{NetworkList, Plugin};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to find plugin {kind:?} in path {path}")]
    NotFound { kind: String, path: String },
    #[error("run plugin {kind}")]
    Spawn {
        kind: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {kind} did not finish {command} in {PLUGIN_TIMEOUT:?}")]
    Timeout { kind: String, command: &'static str },
    #[error("plugin {kind} {command} failed (code {code}): {msg}{details}")]
    Failed {
        kind: String,
        command: &'static str,
        code: i64,
        msg: String,
        details: String,
    },
    #[error("plugin {kind} returned an invalid result: {reason}")]
    BadResult { kind: String, reason: String },
}

/// Who the attachment is for, as CNI_* variables describe it.
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `K8S_POD_NAMESPACE` and friends; `IgnoreUnknown=1` is always sent first.
    pub args: Vec<(String, String)>,
}

impl Invocation<'_> {
    fn cni_args(&self) -> String {
        std::iter::once("IgnoreUnknown=1".to_owned())
            .chain(self.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The plugin's stdin: its object with the list's name and version, and the previous result.
fn stdin_config(list: &NetworkList, plugin: &Plugin, prev: Option<&Value>) -> Vec<u8> {
    let mut config: Map<String, Value> = plugin.raw.clone();
    config.insert("name".into(), Value::String(list.name.clone()));
    config.insert("cniVersion".into(), Value::String(version(list)));
    if let Some(prev) = prev {
        config.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&config).expect("json map serialises")
}

/// The version spoken to plugins: the list's, except that 1.1.0 is sent as 1.0.0, which every
/// installed reference plugin accepts (Debian's 1.1.1 plugins refuse 1.1.0).
fn version(list: &NetworkList) -> String {
    if list.cni_version == "1.1.0" {
        WRITE_VERSION.to_owned()
    } else {
        list.cni_version.clone()
    }
}

fn find(bin_dirs: &[PathBuf], kind: &str) -> Result<PathBuf, Error> {
    bin_dirs
        .iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound {
            kind: kind.to_owned(),
            path: bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

async fn exec(
    bin_dirs: &[PathBuf],
    list: &NetworkList,
    plugin: &Plugin,
    command: &'static str,
    inv: &Invocation<'_>,
    prev: Option<&Value>,
) -> Result<Value, Error> {
    let binary = find(bin_dirs, &plugin.kind)?;
    let cni_path = bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut child = tokio::process::Command::new(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.cni_args())
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            kind: plugin.kind.clone(),
            source,
        })?;
    let input = stdin_config(list, plugin, prev);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input).await;
    }
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::Timeout {
            kind: plugin.kind.clone(),
            command,
        })?
        .map_err(|source| Error::Spawn {
            kind: plugin.kind.clone(),
            source,
        })?;
    if output.status.success() {
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&output.stdout).map_err(|e| Error::BadResult {
            kind: plugin.kind.clone(),
            reason: e.to_string(),
        });
    }
    // Errors come on stdout as {"code","msg","details"}; stderr is only logs.
    let error: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(Error::Failed {
        kind: plugin.kind.clone(),
        command,
        code: error["code"].as_i64().unwrap_or(-1),
        msg: error["msg"].as_str().map(str::to_owned).unwrap_or(stderr),
        details: error["details"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {d}"))
            .unwrap_or_default(),
    })
}

/// ADD through the whole chain; each plugin gets the previous one's result. On failure the chain
/// is deleted again (a DEL must follow even a failed ADD), and the first error returned.
pub async fn add(
    bin_dirs: &[PathBuf],
    list: &NetworkList,
    inv: &Invocation<'_>,
) -> Result<Value, Error> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        match exec(bin_dirs, list, plugin, "ADD", inv, prev.as_ref()).await {
            Ok(result) => prev = Some(result),
            Err(e) => {
                let _ = del(bin_dirs, list, inv, prev.as_ref()).await;
                return Err(e);
            }
        }
    }
    let result = prev.unwrap_or(Value::Null);
    if result
        .get("ips")
        .and_then(Value::as_array)
        .is_none_or(|ips| ips.is_empty())
    {
        let _ = del(bin_dirs, list, inv, Some(&result)).await;
        return Err(Error::BadResult {
            kind: list.name.clone(),
            reason: "no IPs in the final result".into(),
        });
    }
    Ok(result)
}

/// DEL in reverse order, every plugin given the cached result; errors are collected.
pub async fn del(
    bin_dirs: &[PathBuf],
    list: &NetworkList,
    inv: &Invocation<'_>,
    cached: Option<&Value>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = exec(bin_dirs, list, plugin, "DEL", inv, cached).await {
            errors.push(e.to_string());
        }
    }
    errors
}

/// CHECK through the chain (skipped when the list says `disableCheck`).
pub async fn check(
    bin_dirs: &[PathBuf],
    list: &NetworkList,
    inv: &Invocation<'_>,
    cached: &Value,
) -> Result<(), Error> {
    if list.disable_check {
        return Ok(());
    }
    for plugin in &list.plugins {
        exec(bin_dirs, list, plugin, "CHECK", inv, Some(cached)).await?;
    }
    Ok(())
}

/// The pod's addresses from a result: `ips` on the interface that lives in the sandbox.
pub fn result_ips(result: &Value, ifname: &str) -> Vec<(std::net::IpAddr, u8)> {
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| match ip["interface"].as_u64() {
            Some(i) => interfaces
                .get(i as usize)
                .is_some_and(|iface| iface["name"] == ifname),
            None => true,
        })
        .filter_map(|ip| {
            let (addr, prefix) = ip["address"].as_str()?.split_once('/')?;
            Some((addr.parse().ok()?, prefix.parse().ok()?))
        })
        .collect()
}

/// libcni's cache file (`<cacheDir>/results/<net>-<id>-<ifname>`), so `cnitool` and libcni GC
/// see nodelet's attachments as their own.
pub fn write_cache(
    cache_dir: &Path,
    list: &NetworkList,
    inv: &Invocation<'_>,
    result: &Value,
) -> std::io::Result<PathBuf> {
    let dir = cache_dir.join("results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}-{}-{}", list.name, inv.container_id, inv.ifname));
    let args: Vec<[String; 2]> = inv
        .args
        .iter()
        .map(|(k, v)| [k.clone(), v.clone()])
        .collect();
    let entry = json!({
        "kind": "cniCacheV1",
        "containerId": inv.container_id,
        "config": base64(&list.bytes),
        "ifName": inv.ifname,
        "networkName": list.name,
        "netns": inv.netns,
        "cniArgs": args,
        "capabilityArgs": {},
        "result": result,
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&entry)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn remove_cache(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) {
    let _ = std::fs::remove_file(
        cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}")),
    );
}

/// Standard base64 with padding (Go's `[]byte` JSON encoding), for the cache's `config`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"{\"a\":1}"), "eyJhIjoxfQ==");
    }

    #[test]
    fn ips_of_the_sandbox_interface() {
        let result = json!({"interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/x"}],
            "ips":[{"interface":2,"address":"10.244.0.2/24","gateway":"10.244.0.1"}]});
        let ips = result_ips(&result, "eth0");
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].0.to_string(), "10.244.0.2");
        assert_eq!(ips[0].1, 24);
        assert!(result_ips(&result, "net1").is_empty());
    }

    #[test]
    fn stdin_carries_name_version_and_prev_result() {
        let list = nodelet_cni_config::config::parse(
            Path::new("x.conflist"),
            br#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"portmap","snat":true}]}"#,
        )
        .unwrap();
        let stdin: Value = serde_json::from_slice(&stdin_config(
            &list,
            &list.plugins[0],
            Some(&json!({"ips":[]})),
        ))
        .unwrap();
        assert_eq!(
            stdin,
            json!({"type":"portmap","snat":true,"name":"n","cniVersion":"1.0.0","prevResult":{"ips":[]}})
        );
    }
}
