//! The cgroup v2 side of device isolation: the BPF_PROG_TYPE_CGROUP_DEVICE program for a folded
//! rule set, as raw `struct bpf_insn`s (runc's `devicefilter.go` layout), and its loading.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::{
    Access, DeviceRule, Error, Node, Ruleset, BPF_PROG_TYPE_CGROUP_DEVICE, LICENSE, PROG_NAME,
    VERIFIER_LOG_SIZE,
};
use crate::sys;

pub(super) fn load(dir: &Path, code: &[[u8; 8]]) -> Result<OwnedFd, Error> {
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

/// One eBPF instruction, `struct bpf_insn` of include/uapi/linux/bpf.h: opcode, the
/// destination and source registers in one byte, a jump offset and an immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub(super) code: u8,
    pub(super) regs: u8,
    pub(super) off: i16,
    pub(super) imm: i32,
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
    pub(super) fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

// Opcodes are class | operation | operand source (include/uapi/linux/bpf_common.h, bpf.h).
pub(super) const BPF_LDX: u8 = 0x01;
pub(super) const BPF_ALU: u8 = 0x04;
pub(super) const BPF_JMP: u8 = 0x05;
pub(super) const BPF_W: u8 = 0x00;
pub(super) const BPF_MEM: u8 = 0x60;
pub(super) const BPF_K: u8 = 0x00;
pub(super) const BPF_X: u8 = 0x08;
pub(super) const BPF_AND: u8 = 0x50;
pub(super) const BPF_RSH: u8 = 0x70;
pub(super) const BPF_MOV: u8 = 0xb0;
pub(super) const BPF_JEQ: u8 = 0x10;
pub(super) const BPF_JNE: u8 = 0x50;
pub(super) const BPF_EXIT: u8 = 0x90;

pub(super) const R0: u8 = 0;
pub(super) const R1: u8 = 1;
pub(super) const R2: u8 = 2;
pub(super) const R3: u8 = 3;
pub(super) const R4: u8 = 4;
pub(super) const R5: u8 = 5;

/// `dst = *(u32 *)(src + off)`.
pub(super) fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}

/// `dst = (u32)dst <op> imm`, zeroing the upper half.
pub(super) fn alu32_imm(op: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
}

pub(super) fn mov32_reg(dst: u8, src: u8) -> Insn {
    Insn::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}

/// `if dst <op> imm goto +off`, a 64-bit compare with `imm` sign-extended.
pub(super) fn jump_imm(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(BPF_JMP | op | BPF_K, dst, 0, off, imm)
}

pub(super) fn jump_reg(op: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(BPF_JMP | op | BPF_X, dst, src, off, 0)
}

pub(super) fn exit() -> Insn {
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
