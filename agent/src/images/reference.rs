//! Image references as users write them, normalised as containerd and Docker do:
//! `busybox` is `docker.io/library/busybox:latest`, `reg:5000/team/app@sha256:...` keeps its digest.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct Error {
    pub reference: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub const DEFAULT_REGISTRY: &str = "docker.io";

impl Reference {
    /// The name a digest identifies an image by, as containerd's CRI reports `imageID` and
    /// kubelet the node's images: `docker.io/luksa/kubia@sha256:...` (no tag).
    pub fn by_digest(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    pub fn parse(text: &str) -> Result<Reference, Error> {
        let err = |reason| Error {
            reference: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| err("digest must be sha256:<64 hex>"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(err("digest must be sha256:<64 hex>"));
                }
                (r, Some(d.to_owned()))
            }
            None => (text, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_owned())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !valid {
                return Err(err("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), path.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(err(
                "repository must be lower-case letters, digits and separators",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl Reference {
    /// kubelet's pull-policy default: `Always` for `:latest` or no tag, `IfNotPresent` otherwise.
    pub fn default_pull_policy(&self) -> &'static str {
        if self.digest.is_none() && self.tag.as_deref() == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("luksa/kubia"), "docker.io/luksa/kubia:latest");
        assert_eq!(
            norm("docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let d = "sha256:".to_owned() + &"a".repeat(64);
        assert_eq!(
            norm(&format!("registry.example.com:5000/team/app@{d}")),
            format!("registry.example.com:5000/team/app@{d}")
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/app:v1"), "127.0.0.1:5000/app:v1");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:xyz",
            "a//b",
            "busybox:-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
