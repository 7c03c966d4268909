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
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Hierarchy;
use crate::sys;

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
    let prog = load(dir, &code)?;
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

fn load(dir: &Path, code: &[[u8; 8]]) -> Result<OwnedFd, Error> {
    let _memlock = MemlockLifted::lift();
    let first = sys::bpf_prog_load(
        BPF_PROG_TYPE_CGROUP_DEVICE,
        code,
        LICENSE,
        PROG_NAME,
        &mut [],
    );
    let source = match first {
        Ok(prog) => return Ok(prog),
        Err(e) => e,
    };
    // Only a failed load is repeated with a log: a log that does not fit its buffer fails a
    // load on its own (ENOSPC), and the first error is the one to report.
    let mut log = vec![0u8; VERIFIER_LOG_SIZE];
    if let Ok(prog) = sys::bpf_prog_load(
        BPF_PROG_TYPE_CGROUP_DEVICE,
        code,
        LICENSE,
        PROG_NAME,
        &mut log,
    ) {
        return Ok(prog);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err(Error::Load {
        path: dir.to_owned(),
        log: String::from_utf8_lossy(&log[..end]).trim_end().to_owned(),
        source,
    })
}

/// Lifts RLIMIT_MEMLOCK for one program load, and puts it back when dropped.
///
/// Kernels before 5.11 charge BPF programs to the loading user's locked memory, so a low limit
/// makes BPF_PROG_LOAD fail with EPERM; runc lifts the limit too. The limit only gates that
/// charge at load time, and restoring it keeps containers started later on the old limit.
struct MemlockLifted(Option<libc::rlimit>);

impl MemlockLifted {
    fn lift() -> MemlockLifted {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        match sys::memlock_limit() {
            Ok(old) if sys::set_memlock_limit(unlimited).is_ok() => MemlockLifted(Some(old)),
            // Without CAP_SYS_RESOURCE the program may still fit under the current limit.
            _ => MemlockLifted(None),
        }
    }
}

impl Drop for MemlockLifted {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = sys::set_memlock_limit(old);
        }
    }
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

/// One eBPF instruction, `struct bpf_insn` of include/uapi/linux/bpf.h: opcode, the
/// destination and source registers in one byte, a jump offset and an immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        // `__u8 dst_reg:4; __u8 src_reg:4;` are C bit-fields, which GCC and Clang allocate from
        // the low bits on little-endian targets and from the high bits on big-endian ones.
        let regs = if cfg!(target_endian = "little") {
            (src << 4) | (dst & 0xf)
        } else {
            (dst << 4) | (src & 0xf)
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    /// The 8 bytes the kernel reads, in the machine's byte order.
    fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

// Opcodes are class | operation | operand source (include/uapi/linux/bpf_common.h, bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JEQ: u8 = 0x10;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// `dst = *(u32 *)(src + off)`.
fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}

/// `dst = (u32)dst <op> imm`, zeroing the upper half.
fn alu32_imm(op: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
}

fn mov32_reg(dst: u8, src: u8) -> Insn {
    Insn::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}

/// `if dst <op> imm goto +off`, a 64-bit compare with `imm` sign-extended.
fn jump_imm(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(BPF_JMP | op | BPF_K, dst, 0, off, imm)
}

fn jump_reg(op: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(BPF_JMP | op | BPF_X, dst, src, off, 0)
}

fn exit() -> Insn {
    Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

/// The BPF_PROG_TYPE_CGROUP_DEVICE program for `rules`, which returns 1 to allow an access and
/// 0 to deny it, with runc's layout (`devicefilter.go`): the request into registers, one block
/// per exception, the default verdict last.
///
/// Every exception carries the same verdict (the opposite of the default), so the first block
/// that matches decides and their order does not matter; what is left of later rules overriding
/// earlier ones was settled when the rules were folded.
pub fn program(rules: &[DeviceRule]) -> Result<Vec<Insn>, Error> {
    let set = Ruleset::fold(rules)?;
    // R1 points at struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, with
    // access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*.
    let mut insns = vec![
        load_u32(R2, R1, 0),
        alu32_imm(BPF_AND, R2, 0xffff), // R2: device type
        load_u32(R3, R1, 0),
        alu32_imm(BPF_RSH, R3, 16), // R3: requested access
        load_u32(R4, R1, 4),        // R4: major
        load_u32(R5, R1, 8),        // R5: minor
    ];
    let verdict = !set.default_allow;
    for (node, access) in &set.exceptions {
        push_block(&mut insns, *node, *access, verdict);
    }
    insns.push(alu32_imm(BPF_MOV, R0, i32::from(set.default_allow)));
    insns.push(exit());
    Ok(insns)
}

/// One exception: jump to the next block unless the request is for this node with access the
/// exception covers, else return `verdict`.
fn push_block(insns: &mut Vec<Insn>, node: Node, access: Access, verdict: bool) {
    let mut block = Vec::with_capacity(9);
    // Indices of the "not this one" jumps, whose offsets are known once the block is.
    let mut skips = Vec::with_capacity(4);

    skips.push(block.len());
    block.push(jump_imm(BPF_JNE, R2, node.bpf_type(), 0));
    if access != Access::RWM {
        block.push(mov32_reg(R1, R3));
        block.push(alu32_imm(BPF_AND, R1, access.bits() as i32));
        skips.push(block.len());
        if verdict {
            // Allowing needs every requested bit covered, as the v1 kernel's match_exception
            // for a deny-all cgroup (and runc's filter).
            block.push(jump_reg(BPF_JNE, R1, R3, 0));
        } else {
            // Denying needs one requested bit covered, as match_exception_partial for an
            // allow-all cgroup: an O_RDWR open of a device denied `w` is denied. (runc's filter
            // checks for a subset here too, which lets that open through.)
            block.push(jump_imm(BPF_JEQ, R1, 0, 0));
        }
    }
    // Numbers above i32::MAX sign-extend and never match; no device has one (majors have 12
    // bits and minors 20, see MAJOR() in include/linux/kdev_t.h).
    if let Some(major) = node.major {
        skips.push(block.len());
        block.push(jump_imm(BPF_JNE, R4, major as i32, 0));
    }
    if let Some(minor) = node.minor {
        skips.push(block.len());
        block.push(jump_imm(BPF_JNE, R5, minor as i32, 0));
    }
    block.push(alu32_imm(BPF_MOV, R0, i32::from(verdict)));
    block.push(exit());

    // A jump lands at pc + 1 + off: the next block starts at block.len().
    let len = block.len();
    for at in skips {
        block[at].off = (len - at - 1) as i16;
    }
    insns.extend(block);
}

#[cfg(test)]
mod tests {
    use super::DeviceKind as K;
    use super::NodeKind::{Block, Char};
    use super::*;

    const R: Access = Access {
        read: true,
        write: false,
        mknod: false,
    };
    const W: Access = Access {
        read: false,
        write: true,
        mknod: false,
    };
    const RW: Access = Access {
        read: true,
        write: true,
        mknod: false,
    };
    const M: Access = Access::MKNOD;

    /// Where the interpreter pretends the context lives.
    const CTX: u64 = 0x1000;

    fn registers(insn: Insn) -> (usize, usize) {
        let (low, high) = (usize::from(insn.regs & 0xf), usize::from(insn.regs >> 4));
        if cfg!(target_endian = "little") {
            (low, high)
        } else {
            (high, low)
        }
    }

    /// Runs `prog` on one device request as the kernel's interpreter would, for the opcodes
    /// `program` emits (any other one fails the test). Returns R0.
    fn run(prog: &[Insn], kind: NodeKind, major: u32, minor: u32, access: Access) -> u64 {
        let ty = match kind {
            Block => 1,
            Char => 2,
        };
        let ctx = [(access.bits() << 16) | ty, major, minor];
        let mut reg = [0u64; 11];
        reg[1] = CTX;
        let mut pc = 0usize;
        // Jumps only go forward, so no instruction runs twice.
        for _ in 0..prog.len() {
            let insn = prog[pc];
            let (dst, src) = registers(insn);
            let next = pc + 1;
            assert!(insn.off >= 0, "backward jump at {pc}");
            let target = next + insn.off as usize;
            let imm = insn.imm as i64 as u64;
            pc = match insn.code {
                0x61 => {
                    assert_eq!(reg[src], CTX, "load through a non-context register at {pc}");
                    let off = insn.off as usize;
                    assert!(
                        off.is_multiple_of(4) && off < 12,
                        "context load at offset {off}"
                    );
                    reg[dst] = u64::from(ctx[off / 4]);
                    next
                }
                0x54 => {
                    reg[dst] = u64::from(reg[dst] as u32 & insn.imm as u32);
                    next
                }
                0x74 => {
                    reg[dst] = u64::from((reg[dst] as u32) >> insn.imm);
                    next
                }
                0xbc => {
                    reg[dst] = u64::from(reg[src] as u32);
                    next
                }
                0xb4 => {
                    reg[dst] = u64::from(insn.imm as u32);
                    next
                }
                0x55 if reg[dst] != imm => target,
                0x5d if reg[dst] != reg[src] => target,
                0x15 if reg[dst] == imm => target,
                0x55 | 0x5d | 0x15 => next,
                0x95 => return reg[0],
                code => panic!("opcode {code:#04x} at {pc} is not one program() emits"),
            };
        }
        panic!("the program ran off its end");
    }

    fn allowed(
        rules: &[DeviceRule],
        kind: NodeKind,
        major: u32,
        minor: u32,
        access: Access,
    ) -> bool {
        let verdict = run(&program(rules).unwrap(), kind, major, minor, access);
        assert!(verdict <= 1, "verdict {verdict}");
        verdict == 1
    }

    impl Ruleset {
        /// The v1 kernel's check (security/device_cgroup.c, devcgroup_legacy_check_permission).
        fn allows(&self, kind: NodeKind, major: u32, minor: u32, access: Access) -> bool {
            let mut hits = self.exceptions.iter().filter(|(node, _)| {
                node.kind == kind
                    && node.major.is_none_or(|m| m == major)
                    && node.minor.is_none_or(|m| m == minor)
            });
            if self.default_allow {
                !hits.any(|(_, held)| held.intersects(access))
            } else {
                hits.any(|(_, held)| access.difference(*held).is_empty())
            }
        }
    }

    #[test]
    fn default_program_lets_through_only_the_standard_devices() {
        let rules = default_rules();
        let ok = |kind, major, minor, access| allowed(&rules, kind, major, minor, access);
        assert!(ok(Char, 1, 3, R), "/dev/null read");
        assert!(ok(Char, 1, 3, RW), "/dev/null read-write");
        assert!(!ok(Block, 7, 0, R), "/dev/loop0 read");
        assert!(!ok(Block, 7, 0, RW), "/dev/loop0 read-write");
        assert!(ok(Block, 7, 0, M), "/dev/loop0 mknod, from b *:* m");
        assert!(ok(Char, 10, 229, M), "mknod of anything, from c *:* m");
        assert!(ok(Char, 136, 5, RW), "/dev/pts/5");
        assert!(ok(Char, 5, 2, RW), "/dev/ptmx");
        assert!(ok(Char, 10, 200, RW), "/dev/net/tun, back since runc 1.2.4");
        assert!(!ok(Char, 10, 229, R), "/dev/fuse");
        assert!(!ok(Char, 10, 229, RW), "/dev/fuse");
        assert!(!ok(Char, 4, 0, RW), "/dev/tty0");
        assert!(!ok(Char, 10, 237, RW), "/dev/loop-control");
        assert!(!ok(Char, 5, 1, RW), "/dev/console is not in runc's list");
        assert!(
            !ok(Block, 1, 3, R),
            "a block device with /dev/null's numbers"
        );
    }

    #[test]
    fn no_rules_deny_everything() {
        assert_eq!(program(&[]).unwrap().len(), 8);
        assert!(!allowed(&[], Char, 1, 3, R));
        assert!(!allowed(&[], Block, 7, 0, M));
    }

    #[test]
    fn program_agrees_with_the_v1_kernel() {
        let mut narrowed = default_rules();
        narrowed.push(DeviceRule::denying(K::Char, Some(1), Some(3), W));
        narrowed.push(DeviceRule::allowing(K::Block, Some(8), None, R));
        let allow_all_but = vec![
            DeviceRule::allow_all(),
            DeviceRule::denying(K::Char, Some(10), Some(200), W),
            DeviceRule::denying(K::Block, Some(7), None, Access::RWM),
            DeviceRule::denying(K::Char, None, Some(3), M),
            DeviceRule::allowing(K::Char, None, Some(3), M),
        ];
        for rules in [default_rules(), narrowed, allow_all_but] {
            let set = Ruleset::fold(&rules).unwrap();
            let prog = program(&rules).unwrap();
            for kind in [Block, Char] {
                for major in [0, 1, 4, 5, 7, 8, 10, 136, 200] {
                    for minor in [0, 1, 2, 3, 5, 7, 8, 9, 200, 229, 237] {
                        for bits in 1..8 {
                            let access = Access::from_bits(bits);
                            assert_eq!(
                                run(&prog, kind, major, minor, access) == 1,
                                set.allows(kind, major, minor, access),
                                "{kind:?} {major}:{minor} {access} under {rules:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn denying_one_bit_denies_a_request_that_includes_it() {
        let rules = [
            DeviceRule::allow_all(),
            DeviceRule::denying(K::Char, Some(10), Some(200), W),
        ];
        assert!(allowed(&rules, Char, 10, 200, R));
        assert!(!allowed(&rules, Char, 10, 200, RW));
        assert!(allowed(&rules, Char, 1, 3, RW));
    }

    #[test]
    fn later_rules_take_access_back() {
        let rules = [
            DeviceRule::deny_all(),
            DeviceRule::allowing(K::Char, Some(1), Some(3), Access::RWM),
            DeviceRule::denying(K::Char, Some(1), Some(3), W),
        ];
        assert!(allowed(&rules, Char, 1, 3, R));
        assert!(!allowed(&rules, Char, 1, 3, RW));
        assert!(allowed(&rules, Char, 1, 3, M));
        // A reset forgets everything before it.
        let mut reset = rules.to_vec();
        reset.push(DeviceRule::deny_all());
        assert!(!allowed(&reset, Char, 1, 3, R));
    }

    #[test]
    fn a_hole_in_a_wildcard_is_refused() {
        let rules = [
            DeviceRule::deny_all(),
            DeviceRule::allowing(K::Char, None, None, M),
            DeviceRule::denying(K::Char, Some(1), Some(3), M),
        ];
        match program(&rules) {
            Err(Error::HolePunch { rule, wider }) => {
                assert_eq!(rule, "c 1:3 m");
                assert_eq!(wider, "c *:* m");
            }
            other => panic!("{other:?}"),
        }
        // Taking away bits the wildcard does not grant is fine.
        let mut fine = rules[..2].to_vec();
        fine.push(DeviceRule::allowing(K::Char, Some(1), Some(3), RW));
        fine.push(DeviceRule::denying(K::Char, Some(1), Some(3), W));
        assert!(program(&fine).is_ok());
    }

    #[test]
    fn a_rule_without_access_is_refused() {
        let rules = [DeviceRule::allowing(
            K::Char,
            Some(1),
            Some(3),
            Access::default(),
        )];
        assert!(matches!(program(&rules), Err(Error::NoAccess { .. })));
    }

    #[test]
    fn v1_lines() {
        assert_eq!(v1_line(&DeviceRule::deny_all()), "a *:* rwm");
        assert_eq!(
            v1_line(&DeviceRule::allowing(K::Char, None, None, M)),
            "c *:* m"
        );
        assert_eq!(
            v1_line(&DeviceRule::allowing(K::Block, None, None, M)),
            "b *:* m"
        );
        assert_eq!(
            v1_line(&DeviceRule::allowing(
                K::Char,
                Some(1),
                Some(3),
                Access::RWM
            )),
            "c 1:3 rwm"
        );
        assert_eq!(
            v1_line(&DeviceRule::allowing(K::Char, Some(136), None, Access::RWM)),
            "c 136:* rwm"
        );
        assert_eq!(
            v1_line(&DeviceRule::denying(K::Block, Some(7), Some(0), RW)),
            "b 7:0 rw"
        );
        let wm = Access {
            write: true,
            mknod: true,
            ..Access::default()
        };
        assert_eq!(
            v1_line(&DeviceRule::denying(K::Char, None, Some(3), wm)),
            "c *:3 wm"
        );
    }

    #[test]
    fn v1_writes_deny_all_first_then_each_allowed_device() {
        let writes = v1_writes(&Ruleset::fold(&default_rules()).unwrap());
        let expected: Vec<(&str, String)> = [
            ("devices.deny", "a *:* rwm"),
            ("devices.allow", "b *:* m"),
            ("devices.allow", "c *:* m"),
            ("devices.allow", "c 1:3 rwm"),
            ("devices.allow", "c 1:5 rwm"),
            ("devices.allow", "c 1:7 rwm"),
            ("devices.allow", "c 1:8 rwm"),
            ("devices.allow", "c 1:9 rwm"),
            ("devices.allow", "c 5:0 rwm"),
            ("devices.allow", "c 5:2 rwm"),
            ("devices.allow", "c 10:200 rwm"),
            ("devices.allow", "c 136:* rwm"),
        ]
        .into_iter()
        .map(|(file, line)| (file, line.to_owned()))
        .collect();
        assert_eq!(writes, expected);
    }

    #[test]
    fn v1_allow_all_writes_and_lists() {
        let set = Ruleset::fold(&[
            DeviceRule::allow_all(),
            DeviceRule::denying(K::Char, Some(10), Some(200), W),
        ])
        .unwrap();
        assert_eq!(
            v1_writes(&set),
            vec![
                ("devices.allow", "a *:* rwm".to_owned()),
                ("devices.deny", "c 10:200 w".to_owned()),
            ]
        );
        assert_eq!(v1_list(&set), vec!["a *:* rwm".to_owned()]);
        let default = Ruleset::fold(&default_rules()).unwrap();
        assert_eq!(v1_list(&default).len(), 11);
    }

    #[test]
    fn instructions_encode_like_struct_bpf_insn() {
        let insn = jump_reg(BPF_JNE, R1, R3, -2);
        assert_eq!(insn.code, 0x5d);
        assert_eq!(registers(insn), (1, 3));
        let bytes = insn.to_bytes();
        assert_eq!(bytes[0], 0x5d);
        assert_eq!(i16::from_ne_bytes([bytes[2], bytes[3]]), -2);
        if cfg!(target_endian = "little") {
            assert_eq!(bytes[1], 0x31);
        }
        let mov = alu32_imm(BPF_MOV, R0, 1).to_bytes();
        assert_eq!(mov[0], 0xb4);
        assert_eq!(i32::from_ne_bytes([mov[4], mov[5], mov[6], mov[7]]), 1);
        assert_eq!(load_u32(R4, R1, 4).code, 0x61);
        assert_eq!(exit().code, 0x95);
    }

    #[test]
    fn rules_travel_as_json() {
        let rule = DeviceRule::allowing(K::Char, Some(136), None, Access::RWM);
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"char","major":136,"minor":null,"access":{"read":true,"write":true,"mknod":true},"allow":true}"#
        );
        let rules = default_rules();
        let back: Vec<DeviceRule> =
            serde_json::from_str(&serde_json::to_string(&rules).unwrap()).unwrap();
        assert_eq!(back, rules);
        let short: Access = serde_json::from_str(r#"{"mknod":true}"#).unwrap();
        assert_eq!(short, M);
    }
}
