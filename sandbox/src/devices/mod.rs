//! Device isolation for containers, as runc does it: which device nodes a container may open or
//! mknod(2), enforced by the v1 devices controller or, on cgroup v2, by an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's cgroup.
//!
//! Rules are first folded the way the v1 kernel folds writes to `devices.allow` and
//! `devices.deny` (security/device_cgroup.c), as runc's emulator does
//! (opencontainers/cgroups `devices/devices_emulator.go`): an `a` rule resets to allow-all or
//! deny-all, every other rule adds an exception to that default or takes access away from one.
//! The v1 writes and the v2 program are both generated from the folded set, so a container gets
//! the same devices on either hierarchy.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Hierarchy;
use crate::sys;

mod bpf;
#[cfg(test)]
mod tests;

pub use bpf::{program, Insn};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// What an `a` rule reads as, and what `devices.list` shows for an allow-all cgroup.
const V1_ALL: &str = "a *:* rwm";

/// `enum bpf_prog_type` and `enum bpf_attach_type` values of include/uapi/linux/bpf.h.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Lets more programs run on the same hook (systemd's, a parent's): the kernel runs every
/// program attached to the cgroup and its ancestors, and allows an access only when all do.
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
/// The verifier only checks a license to gate GPL-only helpers, which the program does not call;
/// runc passes "Apache" too.
const LICENSE: &CStr = c"Apache";
/// Shown by `bpftool prog`; at most 15 characters of `[A-Za-z0-9_.]` (BPF_OBJ_NAME_LEN).
const PROG_NAME: &str = "nodelet_devices";
/// Room for the verifier's explanation when a load fails; far more than this program needs, and
/// under the 16 MiB that kernels before 5.2 accept.
const VERIFIER_LOG_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device rule {rule:?} grants no access (r, w or m)")]
    NoAccess { rule: String },
    #[error("device rule {rule:?} cannot take access away from the wider rule {wider:?}")]
    HolePunch { rule: String, wider: String },
    #[error("no devices controller mounted at {path}")]
    NoController { path: PathBuf },
    #[error("create devices cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} lists {found:?}, not the rules written ({expected:?})")]
    Mismatch {
        path: PathBuf,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("open cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("load device filter for {path} (verifier log: {log:?})")]
    Load {
        path: PathBuf,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("attach device filter to {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which device nodes a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
    /// Every device with every access (`a`): resets everything before it to allow-all or
    /// deny-all; its numbers and access are ignored, as the kernel ignores them.
    All,
}

/// What a rule allows or denies: `r`, `w` and `m` (mknod(2)) in the v1 files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl Access {
    pub const RWM: Access = Access {
        read: true,
        write: true,
        mknod: true,
    };
    pub const MKNOD: Access = Access {
        read: false,
        write: false,
        mknod: true,
    };

    /// The BPF_DEVCG_ACC_* bits of include/uapi/linux/bpf.h (MKNOD 1, READ 2, WRITE 4), which
    /// are also the set this module computes with.
    fn bits(self) -> u32 {
        u32::from(self.mknod) | (u32::from(self.read) << 1) | (u32::from(self.write) << 2)
    }

    fn from_bits(bits: u32) -> Access {
        Access {
            mknod: bits & 1 != 0,
            read: bits & 2 != 0,
            write: bits & 4 != 0,
        }
    }

    fn union(self, other: Access) -> Access {
        Access::from_bits(self.bits() | other.bits())
    }

    fn difference(self, other: Access) -> Access {
        Access::from_bits(self.bits() & !other.bits())
    }

    fn intersects(self, other: Access) -> bool {
        self.bits() & other.bits() != 0
    }

    fn is_empty(self) -> bool {
        self.bits() == 0
    }
}

/// `rwm` order, as the kernel prints it in `devices.list`.
impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, letter) in [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')] {
            if on {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// One line of a devices policy, as in the OCI spec's `linux.resources.devices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    /// `None` for any major (`*`).
    pub major: Option<u32>,
    /// `None` for any minor (`*`).
    pub minor: Option<u32>,
    pub access: Access,
    pub allow: bool,
}

impl DeviceRule {
    pub fn allow_all() -> DeviceRule {
        DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: Access::RWM,
            allow: true,
        }
    }

    pub fn deny_all() -> DeviceRule {
        DeviceRule {
            allow: false,
            ..DeviceRule::allow_all()
        }
    }

    pub fn allowing(
        kind: DeviceKind,
        major: Option<u32>,
        minor: Option<u32>,
        access: Access,
    ) -> DeviceRule {
        DeviceRule {
            kind,
            major,
            minor,
            access,
            allow: true,
        }
    }

    pub fn denying(
        kind: DeviceKind,
        major: Option<u32>,
        minor: Option<u32>,
        access: Access,
    ) -> DeviceRule {
        DeviceRule {
            allow: false,
            ..DeviceRule::allowing(kind, major, minor, access)
        }
    }
}

/// The device rules of an unprivileged container run by containerd's CRI plugin with runc, in
/// the order runc receives them. Rules for devices the pod asks for go after these.
///
/// - containerd `pkg/oci/spec.go` `populateDefaultUnixSpec`: `Resources.Devices` is
///   `[{Allow: false, Access: "rwm"}]`, deny-all. (`WithDefaultUnixDevices`, which also allows
///   /dev/console c 5:1, is what `ctr` and nerdctl add; the CRI plugin does not use it. A CRI
///   container's /dev/console is a bind-mounted pty, c 136:N.)
/// - runc `libcontainer/specconv/spec_linux.go` `AllowedDevices`, which `CreateCgroupConfig`
///   appends after the spec's rules, so users cannot take them away: mknod of any char and any
///   block device, then the standard nodes, the ptys and /dev/net/tun. tun was dropped in runc
///   1.2.0 and put back in 1.2.4 and 1.3.0 (runc 394f4c3b, "Re-add tun/tap to default device
///   rules").
pub fn default_rules() -> Vec<DeviceRule> {
    use DeviceKind::{Block, Char};
    let rwm = |major: u32, minor: Option<u32>| {
        DeviceRule::allowing(Char, Some(major), minor, Access::RWM)
    };
    vec![
        DeviceRule::deny_all(),
        DeviceRule::allowing(Char, None, None, Access::MKNOD),
        DeviceRule::allowing(Block, None, None, Access::MKNOD),
        rwm(1, Some(3)),    // /dev/null
        rwm(1, Some(8)),    // /dev/random
        rwm(1, Some(7)),    // /dev/full
        rwm(5, Some(0)),    // /dev/tty
        rwm(1, Some(5)),    // /dev/zero
        rwm(1, Some(9)),    // /dev/urandom
        rwm(136, None),     // /dev/pts/*
        rwm(5, Some(2)),    // /dev/ptmx
        rwm(10, Some(200)), // /dev/net/tun
    ]
}

/// Applies `rules` to the container cgroup at `path`, relative to the hierarchy root as in
/// `cgroup::CgroupSpec::path`. Call it before the container's process joins the cgroup.
///
/// On v1 the devices controller has a hierarchy of its own, which `cgroup::create` does not
/// make, so this creates the directory.
pub fn apply(hierarchy: Hierarchy, path: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    // Joining an absolute path would replace the root.
    let path = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new(CGROUP_ROOT);
    match hierarchy {
        Hierarchy::V2 => apply_v2(&root.join(path), rules),
        Hierarchy::V1 => {
            let controller = root.join("devices");
            // Without the controller, /sys/fs/cgroup is a plain tmpfs: the directory and the
            // "rules" would be ordinary files, and the container would get every device.
            if !controller.join("devices.list").is_file() {
                return Err(Error::NoController { path: controller });
            }
            let dir = controller.join(path);
            fs::create_dir_all(&dir).map_err(|source| Error::Create {
                path: dir.clone(),
                source,
            })?;
            apply_v1(&dir, rules)
        }
    }
}

/// cgroup v1: resets the cgroup with an `a` rule, then writes every exception, one rule per
/// write(2) as the kernel parses them, the way runc's `setV1` moves a new cgroup (which
/// inherited allow-all from its parent) to its rules. Then reads `devices.list` back, as runc
/// does, so a rule the kernel took otherwise is an error now rather than a surprise later.
pub fn apply_v1(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let set = Ruleset::fold(rules)?;
    for (file, line) in v1_writes(&set) {
        let path = dir.join(file);
        fs::write(&path, &line).map_err(|source| Error::Write {
            path,
            value: line.clone(),
            source,
        })?;
    }
    let path = dir.join("devices.list");
    let text = fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let mut found: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut expected = v1_list(&set);
    found.sort();
    expected.sort();
    if found != expected {
        return Err(Error::Mismatch {
            path,
            expected,
            found,
        });
    }
    Ok(())
}

/// cgroup v2: loads the program for `rules` (bpf(2) BPF_PROG_LOAD) and attaches it to the cgroup
/// directory `dir` (BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI), as runc's `setV2`.
/// A new container cgroup has no program of its own, so there is none to replace.
pub fn apply_v2(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let code: Vec<[u8; 8]> = program(rules)?.iter().map(|i| i.to_bytes()).collect();
    let cgroup = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| Error::Open {
            path: dir.to_owned(),
            source,
        })?;
    let prog = bpf::load(dir, &code)?;
    sys::bpf_prog_attach(
        cgroup.as_fd(),
        prog.as_fd(),
        BPF_CGROUP_DEVICE,
        BPF_F_ALLOW_MULTI,
    )
    .map_err(|source| Error::Attach {
        path: dir.to_owned(),
        source,
    })?;
    // The attachment holds its own reference on the program until it is detached or the cgroup
    // is freed, so closing ours does not unload it.
    drop(prog);
    Ok(())
}

/// The device part of an exception (`c 1:3`, `b *:*`). Fields in runc's sort order (major,
/// minor, type, wildcards first), so the v1 writes come in the order runc writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    major: Option<u32>,
    minor: Option<u32>,
    kind: NodeKind,
}

/// A device type an exception can name: `a` is never an exception, it resets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NodeKind {
    Block,
    Char,
}

impl Node {
    fn rule(self, access: Access, allow: bool) -> DeviceRule {
        let kind = match self.kind {
            NodeKind::Block => DeviceKind::Block,
            NodeKind::Char => DeviceKind::Char,
        };
        DeviceRule {
            kind,
            major: self.major,
            minor: self.minor,
            access,
            allow,
        }
    }

    /// BPF_DEVCG_DEV_* of include/uapi/linux/bpf.h.
    fn bpf_type(self) -> i32 {
        match self.kind {
            NodeKind::Block => 1,
            NodeKind::Char => 2,
        }
    }
}

/// Rules folded as the v1 kernel folds writes: a default verdict, and exceptions to it.
#[derive(Debug, PartialEq)]
struct Ruleset {
    default_allow: bool,
    exceptions: BTreeMap<Node, Access>,
}

impl Ruleset {
    fn fold(rules: &[DeviceRule]) -> Result<Ruleset, Error> {
        // As runc's buildEmulator: start from deny-all, whatever the first rule says.
        let mut set = Ruleset {
            default_allow: false,
            exceptions: BTreeMap::new(),
        };
        for rule in rules {
            set.apply(rule)?;
        }
        Ok(set)
    }

    fn apply(&mut self, rule: &DeviceRule) -> Result<(), Error> {
        let kind = match rule.kind {
            DeviceKind::All => {
                self.default_allow = rule.allow;
                self.exceptions.clear();
                return Ok(());
            }
            DeviceKind::Block => NodeKind::Block,
            DeviceKind::Char => NodeKind::Char,
        };
        if rule.access.is_empty() {
            return Err(Error::NoAccess {
                rule: v1_line(rule),
            });
        }
        let node = Node {
            major: rule.major,
            minor: rule.minor,
            kind,
        };
        if rule.allow == self.default_allow {
            return self.take_away(rule, node);
        }
        let held = self.exceptions.entry(node).or_default();
        *held = held.union(rule.access);
        Ok(())
    }

    /// A rule agreeing with the default removes access from the exception of exactly its node
    /// (dev_exception_rm). The kernel silently leaves wider exceptions alone, so `deny c 1:3 m`
    /// after `allow c *:* m` would still let /dev/null be made; runc refuses such a rule rather
    /// than let it look effective, and so does this.
    fn take_away(&mut self, rule: &DeviceRule, node: Node) -> Result<(), Error> {
        let wider = [
            Node {
                major: None,
                ..node
            },
            Node {
                minor: None,
                ..node
            },
            Node {
                major: None,
                minor: None,
                ..node
            },
        ];
        for wide in wider.into_iter().filter(|w| *w != node) {
            if let Some(&held) = self.exceptions.get(&wide) {
                if held.intersects(rule.access) {
                    return Err(Error::HolePunch {
                        rule: v1_line(rule),
                        wider: v1_line(&wide.rule(held, !self.default_allow)),
                    });
                }
            }
        }
        let left = match self.exceptions.get(&node) {
            Some(held) => held.difference(rule.access),
            None => return Ok(()),
        };
        if left.is_empty() {
            self.exceptions.remove(&node);
        } else {
            self.exceptions.insert(node, left);
        }
        Ok(())
    }
}

/// A rule as the v1 files take it: `c 1:3 rwm`, `b *:* m`, `a *:* rwm`.
fn v1_line(rule: &DeviceRule) -> String {
    let kind = match rule.kind {
        DeviceKind::All => return V1_ALL.to_owned(),
        DeviceKind::Char => 'c',
        DeviceKind::Block => 'b',
    };
    let number = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
    format!(
        "{kind} {}:{} {}",
        number(rule.major),
        number(rule.minor),
        rule.access
    )
}

/// The writes, in order, that give a cgroup exactly `set`: the `a` reset (which drops whatever
/// it inherited), then each exception to the other file.
fn v1_writes(set: &Ruleset) -> Vec<(&'static str, String)> {
    let (reset, exception) = if set.default_allow {
        ("devices.allow", "devices.deny")
    } else {
        ("devices.deny", "devices.allow")
    };
    let mut writes = vec![(reset, V1_ALL.to_owned())];
    writes.extend(
        set.exceptions
            .iter()
            .map(|(node, access)| (exception, v1_line(&node.rule(*access, !set.default_allow)))),
    );
    writes
}

/// What `devices.list` shows once `set` is written: an allow-all cgroup lists `a *:* rwm` and
/// never its deny exceptions; a deny-all one lists its allow exceptions.
fn v1_list(set: &Ruleset) -> Vec<String> {
    if set.default_allow {
        return vec![V1_ALL.to_owned()];
    }
    set.exceptions
        .iter()
        .map(|(node, access)| v1_line(&node.rule(*access, true)))
        .collect()
}
