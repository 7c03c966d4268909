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

/// Where kubelet looks for a node's credentials, first found wins per registry: the given file,
/// `<rootDir>/config.json`, `/var/lib/kubelet/config.json`, `$HOME/.docker/config.json`.
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

/// User and password for `registry` from the first file that has them. A file that exists but
/// does not parse is an error naming it (a typo must not silently become anonymous pulls).
pub fn lookup(paths: &[PathBuf], registry: &str) -> Result<Option<(String, String)>, String> {
    for path in paths {
        let Ok(text) = std::fs::read(path) else {
            continue;
        };
        let config: DockerConfig = serde_json::from_slice(&text)
            .map_err(|e| format!("credentials file {}: {e}", path.display()))?;
        for (key, entry) in &config.auths {
            if registry_of(key) != registry {
                continue;
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                return Ok(Some((u.clone(), p.clone())));
            }
            if let Some(auth) = &entry.auth {
                let decoded = openssl::base64::decode_block(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
                    .ok_or_else(|| {
                        format!(
                            "credentials file {}: auths.{key}.auth: not base64 of user:password",
                            path.display()
                        )
                    })?;
                return Ok(Some(decoded));
            }
        }
    }
    Ok(None)
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
        let paths = vec![dir.path().join("missing.json"), a.clone(), b.clone()];
        assert_eq!(
            lookup(&paths, "127.0.0.1:5000").unwrap(),
            Some(("user".into(), "secret".into()))
        );
        assert_eq!(
            lookup(&paths, "docker.io").unwrap(),
            Some(("hub".into(), "pw".into()))
        );
        assert_eq!(lookup(&paths, "quay.io").unwrap(), None);
        std::fs::write(&a, "{nope").unwrap();
        assert!(lookup(&paths, "docker.io").unwrap_err().contains("a.json"));
    }
}
