//! The built-in API's certificates, made at first start and kept in `<rootDir>/pki`: a CA, the
//! serving certificate (SANs for localhost, the node's name and addresses) and an admin client
//! certificate (`O=system:masters`), plus a bearer token. The kubeconfig that uses them is
//! written 0600. P-256 keys: fast to make, and every kubectl speaks ECDSA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("make {what}")]
    Make {
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM certificate or key")]
    Parse {
        path: PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Pki {
    pub ca: X509,
    pub server_cert: X509,
    pub server_key: PKey<Private>,
    pub admin_cert: X509,
    pub admin_key: PKey<Private>,
    pub kubelet_cert: X509,
    pub kubelet_key: PKey<Private>,
    pub token: String,
    /// Signs service account tokens (ES256, as kube-apiserver does with an ECDSA
    /// `--service-account-signing-key-file`).
    pub service_account_key: PKey<Private>,
}

struct Pair {
    cert: X509,
    key: PKey<Private>,
}

enum Role<'a> {
    Ca,
    Server(&'a [String]),
    Client,
}

impl Pki {
    /// Loads the certificates from `dir`, making whatever is missing.
    pub fn ensure(dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.into(),
            source,
        })?;
        let ca = pair(dir, "ca", None, "nodelet-ca", None, Role::Ca)?;
        let server = pair(
            dir,
            "apiserver",
            Some(&ca),
            "nodelet-apiserver",
            None,
            Role::Server(hosts),
        )?;
        let admin = pair(
            dir,
            "admin",
            Some(&ca),
            "kubernetes-admin",
            Some("system:masters"),
            Role::Client,
        )?;
        let kubelet = pair(
            dir,
            "kubelet",
            Some(&ca),
            "nodelet-kubelet",
            None,
            Role::Server(hosts),
        )?;
        let service_account_key = signing_key(&dir.join("sa.key"))?;
        let token_path = dir.join("token");
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let token = crate::random_hex(24);
                write_private(&token_path, token.as_bytes())?;
                token
            }
        };
        Ok(Pki {
            ca: ca.cert,
            server_cert: server.cert,
            server_key: server.key,
            admin_cert: admin.cert,
            admin_key: admin.key,
            kubelet_cert: kubelet.cert,
            kubelet_key: kubelet.key,
            token,
            service_account_key,
        })
    }

    /// A kubeconfig for `server` with the admin certificate, as kubeadm writes `admin.conf`.
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = |pem: Vec<u8>| openssl::base64::encode_block(&pem);
        let ca = b64(self.ca.to_pem().expect("encode CA"));
        let cert = b64(self.admin_cert.to_pem().expect("encode certificate"));
        let key = b64(self
            .admin_key
            .private_key_to_pem_pkcs8()
            .expect("encode key"));
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: nodelet\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: nodelet\n  context:\n    cluster: nodelet\n    user: admin\n    namespace: default\ncurrent-context: nodelet\npreferences: {{}}\n"
        )
    }
}

/// Writes a file readable by its owner only, atomically and durably (keys are made once).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    crate::write_private(path, data)
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.into(),
            source,
        })
}

fn pair(
    dir: &Path,
    name: &str,
    issuer: Option<&Pair>,
    cn: &str,
    org: Option<&str>,
    role: Role,
) -> Result<Pair, PkiError> {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if cert_path.exists() && key_path.exists() {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| PkiError::Read {
                path: p.into(),
                source,
            })
        };
        let parse = |p: &Path, source| PkiError::Parse {
            path: p.into(),
            source,
        };
        let loaded = Pair {
            cert: X509::from_pem(&read(&cert_path)?).map_err(|e| parse(&cert_path, e))?,
            key: PKey::private_key_from_pem(&read(&key_path)?).map_err(|e| parse(&key_path, e))?,
        };
        // A serving certificate is made again when the node has a name or address it does not
        // cover (a new node IP, the pod network's gateway).
        let covers = match &role {
            Role::Server(hosts) => hosts.iter().all(|h| names(&loaded.cert).contains(h)),
            _ => true,
        };
        if covers {
            return Ok(loaded);
        }
    }
    let make = |source| PkiError::Make {
        what: "certificate",
        source,
    };
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(make)?;
    let key = EcKey::generate(&group)
        .and_then(PKey::from_ec_key)
        .map_err(make)?;
    let cert = sign(&key, issuer, cn, org, role).map_err(make)?;
    write_private(&key_path, &key.private_key_to_pem_pkcs8().map_err(make)?)?;
    write_private(&cert_path, &cert.to_pem().map_err(make)?)?;
    Ok(Pair { cert, key })
}

/// The DNS names and IP addresses a certificate is for.
fn names(cert: &X509) -> Vec<String> {
    let sans = cert.subject_alt_names();
    let sans = sans.iter().flatten();
    sans.filter_map(|n| {
        n.dnsname().map(str::to_owned).or_else(|| {
            let ip = n.ipaddress()?;
            let ip: IpAddr = match ip.len() {
                4 => <[u8; 4]>::try_from(ip).ok()?.into(),
                16 => <[u8; 16]>::try_from(ip).ok()?.into(),
                _ => return None,
            };
            Some(ip.to_string())
        })
    })
    .collect()
}

/// The service account signing key: loaded, or made (P-256) and kept 0600.
fn signing_key(path: &Path) -> Result<PKey<Private>, PkiError> {
    if let Ok(pem) = std::fs::read(path) {
        return PKey::private_key_from_pem(&pem).map_err(|source| PkiError::Parse {
            path: path.into(),
            source,
        });
    }
    let make = |source| PkiError::Make {
        what: "service account key",
        source,
    };
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(make)?;
    let key = EcKey::generate(&group)
        .and_then(PKey::from_ec_key)
        .map_err(make)?;
    write_private(path, &key.private_key_to_pem_pkcs8().map_err(make)?)?;
    Ok(key)
}

fn sign(
    key: &PKey<Private>,
    issuer: Option<&Pair>,
    cn: &str,
    org: Option<&str>,
    role: Role,
) -> Result<X509, openssl::error::ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    if let Some(o) = org {
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, o)?;
    }
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name()))?;
    b.set_pubkey(key)?;
    // An hour of slack for clocks a little behind.
    let now = jiff::Timestamp::now().as_second();
    let (not_before, not_after) = (
        Asn1Time::from_unix(now - 3600)?,
        Asn1Time::days_from_now(3650)?,
    );
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    match role {
        Role::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .digital_signature()
                    .build()?,
            )?;
        }
        Role::Server(hosts) => {
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()?,
            )?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            let mut san = SubjectAlternativeName::new();
            for h in hosts {
                if h.parse::<IpAddr>().is_ok() {
                    san.ip(h);
                } else {
                    san.dns(h);
                }
            }
            let ext = san.build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))?;
            b.append_extension(ext)?;
        }
        Role::Client => {
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()?,
            )?;
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    let ski =
        SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))?;
    b.append_extension(ski)?;
    if let Some(i) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&i.cert), None))?;
        b.append_extension(aki)?;
    }
    b.sign(issuer.map_or(key, |i| &i.key), MessageDigest::sha256())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let a = Pki::ensure(dir.path(), &hosts).unwrap();
        let b = Pki::ensure(dir.path(), &hosts).unwrap();
        assert_eq!(
            a.server_cert.to_pem().unwrap(),
            b.server_cert.to_pem().unwrap()
        );
        assert_eq!(a.token, b.token);
        // A host the certificate lacks makes a new one, from the same CA.
        let more = [hosts.clone(), vec!["10.88.0.1".to_owned()]].concat();
        let c = Pki::ensure(dir.path(), &more).unwrap();
        assert!(names(&c.server_cert).contains(&"10.88.0.1".to_owned()));
        assert!(c.server_cert.verify(&a.ca.public_key().unwrap()).unwrap());
        assert!(a.server_cert.verify(&a.ca.public_key().unwrap()).unwrap());
        assert!(a.admin_cert.verify(&a.ca.public_key().unwrap()).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(a
            .kubeconfig("https://127.0.0.1:6443")
            .contains("client-key-data: "));
    }
}
