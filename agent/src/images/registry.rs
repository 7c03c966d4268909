//! How the node reaches a registry: its mirrors first, plain HTTP only for loopback and the
//! registries the operator lists, and TLS trusting the CAs in Docker's `certs.d` layout.

use std::net::IpAddr;
use std::path::PathBuf;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Client;

/// A registry that does not answer a connection in this time is unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Nor one that sends nothing for this long in the middle of a download.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How the node reaches registries, from its configuration.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Registries spoken to over plain HTTP besides those on 127.0.0.0/8 (Docker's default).
    pub insecure: Vec<String>,
    /// docker `config.json` files searched for a registry's credentials, in order.
    pub credentials: Vec<PathBuf>,
    /// Mirrors tried in order before a registry itself (`[http[s]://]host[:port]`).
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Docker's `certs.d` layout: `<dir>/<host[:port]>/*.crt` are extra CAs for that registry,
    /// which is then always spoken to over TLS, even on loopback.
    pub certs_dir: PathBuf,
}

impl Settings {
    pub fn new(config: &crate::config::Config) -> Settings {
        Settings {
            insecure: config.insecure_registries.clone(),
            credentials: super::credentials::search_path(
                config.registry_credentials_file.as_deref(),
                &config.root_dir,
            ),
            mirrors: config.registry_mirrors.clone(),
            certs_dir: config.registry_certs_dir.clone(),
        }
    }

    fn plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let trusted = self.certs_dir.join(registry).is_dir();
        !trusted && (loopback || self.insecure.iter().any(|r| r == registry || r == host))
    }

    /// The registry's mirrors in order, then the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mirrors = self.mirrors.get(registry).into_iter().flatten();
        let mut out: Vec<Endpoint> = mirrors
            .filter_map(|m| parse_mirror(m).ok())
            .map(|(host, plain)| Endpoint {
                plain: plain.unwrap_or_else(|| self.plain_http(&host)),
                host,
                mirror: true,
            })
            .collect();
        out.push(Endpoint {
            host: registry.to_owned(),
            plain: self.plain_http(registry),
            mirror: false,
        });
        out
    }

    /// A client for one endpoint, trusting the CAs in its `certs.d` directory.
    pub fn client(&self, endpoint: &Endpoint) -> Result<Client, String> {
        let dir = self.certs_dir.join(&endpoint.host);
        let mut roots = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut paths: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "crt"))
                .collect();
            paths.sort();
            for path in paths {
                let data =
                    std::fs::read(&path).map_err(|e| format!("read CA {}: {e}", path.display()))?;
                if openssl::x509::X509::stack_from_pem(&data).map_or(true, |certs| certs.is_empty())
                {
                    return Err(format!("CA {}: no PEM certificate in it", path.display()));
                }
                roots.push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data,
                });
            }
        }
        Ok(Client::new(ClientConfig {
            protocol: if endpoint.plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: roots,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        }))
    }
}

/// A `[http[s]://]host[:port]` mirror: its host and, when a scheme is given, whether it is
/// plain HTTP.
pub fn parse_mirror(text: &str) -> Result<(String, Option<bool>), String> {
    let (plain, rest) = match text.split_once("://") {
        Some(("http", rest)) => (Some(true), rest),
        Some(("https", rest)) => (Some(false), rest),
        Some((scheme, _)) => {
            return Err(format!(
                "mirror {text:?}: scheme {scheme:?} is not http or https"
            ))
        }
        None => (None, text),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "mirror {text:?}: expected [http[s]://]host[:port], without a path"
        ));
    }
    Ok((host.to_ascii_lowercase(), plain))
}

/// One place an image can come from: a mirror, or its registry itself.
#[derive(Debug)]
pub struct Endpoint {
    pub host: String,
    pub plain: bool,
    pub mirror: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(certs.join("127.0.0.1:5443")).unwrap();
        let settings = Settings {
            insecure: vec!["registry.lan:5000".into()],
            certs_dir: certs,
            ..Default::default()
        };
        assert!(settings.plain_http("127.0.0.1:5000"));
        assert!(settings.plain_http("localhost:5000"));
        assert!(settings.plain_http("registry.lan:5000"));
        assert!(!settings.plain_http("registry.lan:6000"));
        assert!(!settings.plain_http("docker.io"));
        assert!(
            !settings.plain_http("127.0.0.1:5443"),
            "a registry with CAs in certs.d is spoken to over TLS"
        );
    }

    #[test]
    fn mirrors_come_first_in_order() {
        let settings = Settings {
            mirrors: [(
                "docker.io".to_owned(),
                vec![
                    "127.0.0.1:5000".to_owned(),
                    "https://mirror.lan/".to_owned(),
                    "http://cache.lan:80".to_owned(),
                ],
            )]
            .into(),
            ..Default::default()
        };
        let got: Vec<(String, bool, bool)> = settings
            .endpoints("docker.io")
            .into_iter()
            .map(|e| (e.host, e.plain, e.mirror))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:5000".into(), true, true),
                ("mirror.lan".into(), false, true),
                ("cache.lan:80".into(), true, true),
                ("docker.io".into(), false, false),
            ]
        );
        assert_eq!(settings.endpoints("quay.io").len(), 1);
        assert!(parse_mirror("ftp://x").unwrap_err().contains("ftp"));
        assert!(parse_mirror("https://x/v2/").unwrap_err().contains("path"));
    }
}
