//! Registry credentials from docker `config.json`-style files, as kubelet's DockerConfigKeyring
//! reads them: `{"auths": {"registry[:port]": {"auth": base64("user:pass")}}}` (or `username` and
//! `password`), keys also written as URLs (`https://index.docker.io/v1/`). Files are read at each
//! pull, so credentials added or rotated on the node take effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Where kubelet looks for a node's credentials, in order: the given file, `<rootDir>/config.json`,
/// `/var/lib/kubelet/config.json`, `$HOME/.docker/config.json`.
pub fn search_path(explicit: Option<&Path>, root_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    paths.push(root_dir.join("config.json"));
    paths.push(PathBuf::from("/var/lib/kubelet/config.json"));
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(Path::new(&home).join(".docker/config.json"));
    }
    paths
}

/// The registry a config key names: `https://index.docker.io/v1/` -> `docker.io`,
/// `http://reg:5000/` -> `reg:5000`.
fn registry_of(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Where credentials come from: a docker `config.json` on the node, or the content of a pod's
/// `imagePullSecrets` (type `kubernetes.io/dockerconfigjson` or the legacy `dockercfg`).
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File(PathBuf),
    Secret { name: String, data: Vec<u8> },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(path) => format!("credentials file {}", path.display()),
            Source::Secret { name, .. } => format!("image pull secret {name}"),
        }
    }
}

/// Every user and password for `registry`, in the order of `sources`, one per source that has
/// them: kubelet tries each until the registry takes one. A source that exists but does not parse
/// is an error naming it (a typo must not silently become anonymous pulls).
pub fn lookup(sources: &[Source], registry: &str) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for source in sources {
        let config: DockerConfig = match source {
            Source::File(path) => {
                let Ok(text) = std::fs::read(path) else {
                    continue;
                };
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", source.describe()))?
            }
            // `.dockerconfigjson` wraps the registries in "auths"; `.dockercfg` is the bare map.
            Source::Secret { data, .. } => match serde_json::from_slice::<DockerConfig>(data) {
                Ok(config) if !config.auths.is_empty() => config,
                _ => DockerConfig {
                    auths: serde_json::from_slice(data)
                        .map_err(|e| format!("{}: {e}", source.describe()))?,
                },
            },
        };
        for (key, entry) in &config.auths {
            if registry_of(key) != registry {
                continue;
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                found.push((u.clone(), p.clone()));
                break;
            }
            if let Some(auth) = &entry.auth {
                let decoded = openssl::base64::decode_block(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
                    .ok_or_else(|| {
                        format!(
                            "{}: auths.{key}.auth: not base64 of user:password",
                            source.describe()
                        )
                    })?;
                found.push(decoded);
                break;
            }
        }
    }
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_registry_in_search_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        std::fs::write(
            &a,
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpzZWNyZXQ="}}}"#,
        )
        .unwrap();
        std::fs::write(&b, r#"{"auths": {"https://index.docker.io/v1/": {"username": "hub", "password": "pw"}, "127.0.0.1:5000": {"username": "other", "password": "x"}}}"#).unwrap();
        let sources: Vec<Source> = [dir.path().join("missing.json"), a.clone(), b.clone()]
            .into_iter()
            .map(Source::File)
            .collect();
        assert_eq!(
            lookup(&sources, "127.0.0.1:5000").unwrap(),
            vec![
                ("user".into(), "secret".into()),
                ("other".into(), "x".into())
            ]
        );
        assert_eq!(
            lookup(&sources, "docker.io").unwrap(),
            vec![("hub".into(), "pw".into())]
        );
        assert!(lookup(&sources, "quay.io").unwrap().is_empty());
        std::fs::write(&a, "{nope").unwrap();
        assert!(lookup(&sources, "docker.io")
            .unwrap_err()
            .contains("a.json"));
    }

    #[test]
    fn reads_both_secret_formats() {
        let json = Source::Secret {
            name: "default/regcred".into(),
            data: br#"{"auths": {"reg:5000": {"username": "u", "password": "p"}}}"#.to_vec(),
        };
        let legacy = Source::Secret {
            name: "default/old".into(),
            data: br#"{"reg:5000": {"auth": "dTI6cDI="}}"#.to_vec(),
        };
        assert_eq!(
            lookup(&[json, legacy], "reg:5000").unwrap(),
            vec![("u".into(), "p".into()), ("u2".into(), "p2".into())]
        );
        let broken = Source::Secret {
            name: "default/broken".into(),
            data: b"[1]".to_vec(),
        };
        assert!(lookup(&[broken], "reg:5000")
            .unwrap_err()
            .contains("image pull secret default/broken"));
    }
}
