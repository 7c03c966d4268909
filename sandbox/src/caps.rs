//! The container's identity and privileges: user and groups, capability sets, no_new_privs.
//! Order as runc's `finalizeNamespace`: bounding set, keep caps, setgroups/setgid/setuid, capset.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::spec::ProcessSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("set {set:?} capabilities")]
    Set {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("switch to uid {uid} gid {gid}")]
    User {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    #[error("load the seccomp filter")]
    Seccomp(#[source] std::io::Error),
}

/// Parses capability names (`CAP_CHOWN` or `chown`), as containerd does for securityContext.
pub fn parse(names: &[String]) -> Result<CapsHashSet, Error> {
    names
        .iter()
        .map(|n| {
            let upper = n.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            Capability::from_str(&full).map_err(|_| Error::Unknown(n.clone()))
        })
        .collect()
}

/// Switches to the process's user and leaves it exactly the configured capabilities.
pub fn apply(process: &ProcessSpec) -> Result<(), Error> {
    let wanted = parse(&process.capabilities)?;
    let filter = process
        .seccomp
        .as_deref()
        .map(crate::seccomp::Filter::from_hex)
        .transpose()
        .map_err(Error::Seccomp)?;
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: now, before it goes.
    if let Some(f) = filter.as_ref().filter(|_| !process.no_new_privileges) {
        f.load().map_err(Error::Seccomp)?;
    }
    let set_err = |set| move |source| Error::Set { set, source };
    // Bounding can only shrink (capabilities(7)); drop what is not wanted while CAP_SETPCAP is held.
    let bounding: HashSet<Capability> =
        caps::read(None, CapSet::Bounding).map_err(set_err(CapSet::Bounding))?;
    for cap in bounding.difference(&wanted) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(set_err(CapSet::Bounding))?;
    }
    // Keep the permitted set across setuid to a non-root user; capset below decides what stays.
    nix::sys::prctl::set_keepcaps(true).map_err(|source| Error::User {
        uid: process.uid,
        gid: process.gid,
        source,
    })?;
    let user_err = |source| Error::User {
        uid: process.uid,
        gid: process.gid,
        source,
    };
    let groups: Vec<Gid> = process
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(user_err)?;
    setgid(Gid::from_raw(process.gid)).map_err(user_err)?;
    setuid(Uid::from_raw(process.uid)).map_err(user_err)?;
    caps::clear(None, CapSet::Ambient).map_err(set_err(CapSet::Ambient))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(set_err(CapSet::Inheritable))?;
    caps::set(None, CapSet::Effective, &wanted).map_err(set_err(CapSet::Effective))?;
    caps::set(None, CapSet::Permitted, &wanted).map_err(set_err(CapSet::Permitted))?;
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(Error::NoNewPrivs)?;
        if let Some(f) = &filter {
            f.load().map_err(Error::Seccomp)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings_and_rejects_unknown() {
        let set = parse(&["chown".into(), "CAP_KILL".into(), "net_bind_service".into()]).unwrap();
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert!(set.contains(&Capability::CAP_KILL));
        assert!(set.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(matches!(parse(&["CAP_FLY".into()]), Err(Error::Unknown(n)) if n == "CAP_FLY"));
    }

    #[test]
    fn default_set_is_known() {
        let names: Vec<String> = crate::spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse(&names).unwrap().len(), 14);
    }
}
