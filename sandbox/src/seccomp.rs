//! Loading a container's seccomp filter. The agent compiles the profile (with libseccomp, as
//! runc does) into classic BPF and sends the program; the shim only installs it, with
//! seccomp(2), in the process about to exec: before its capabilities go when no_new_privs is off
//! (installing a filter then needs CAP_SYS_ADMIN), as late as possible when it is on (runc's order).

use std::io;

/// A compiled filter: `sock_filter` instructions in native byte order, as libseccomp exports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter(Vec<libc::sock_filter>);

impl Filter {
    /// Decodes the hex form the container spec carries.
    pub fn from_hex(hex: &str) -> io::Result<Filter> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "seccomp program: not hex BPF");
        let bytes = hex.as_bytes();
        if !bytes.len().is_multiple_of(16) || bytes.is_empty() {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut raw = Vec::with_capacity(bytes.len() / 2);
        for pair in bytes.chunks(2) {
            raw.push(nibble(pair[0]).ok_or_else(bad)? << 4 | nibble(pair[1]).ok_or_else(bad)?);
        }
        let program = raw
            .chunks(8)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Filter(program))
    }

    /// Installs the filter in the calling thread (and what it execs). Async-signal-safe: one
    /// system call, so the vfork child of an exec may call it.
    pub fn load(&self) -> io::Result<()> {
        let program = libc::sock_fprog {
            len: self.0.len() as libc::c_ushort,
            filter: self.0.as_ptr().cast_mut(),
        };
        // SAFETY: `program` points at instructions that live as long as `self`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_garbage() {
        // ret ALLOW (0x06, k = 0x7fff0000)
        let f = Filter::from_hex(&format!("0600000000{}", "00ff7f")).unwrap();
        assert_eq!(f.0.len(), 1);
        assert_eq!(f.0[0].code, 6);
        assert_eq!(f.0[0].k, 0x7fff_0000);
        assert!(Filter::from_hex("zz00000000000000").is_err());
        assert!(Filter::from_hex("").is_err());
        assert!(Filter::from_hex("0600").is_err());
    }
}
