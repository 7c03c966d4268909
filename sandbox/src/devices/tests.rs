//! Device rules: folding, the v1 files, and the v2 program run on a small interpreter.

use super::bpf::*;
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

fn allowed(rules: &[DeviceRule], kind: NodeKind, major: u32, minor: u32, access: Access) -> bool {
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
