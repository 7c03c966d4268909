//! The nodelet library: everything the `nodelet` binary runs, as modules, so that the fuzz
//! targets (tests/fuzz) reach the same parsers the agent uses on untrusted input.

pub mod apiserver;
pub mod cli;
pub mod config;
pub mod https;
pub mod images;
pub mod kubelet;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod node;
pub mod paths;
pub mod pod;
pub mod reset;
pub mod runtime;
pub mod source;
pub mod stats;
pub mod systemd;

use sha2::Digest as _;

/// Random hex (ids, temporary names) from the kernel's generator.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    // getrandom(2): no descriptor to open, so it works when the process is out of them.
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into the buffer's tail.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "getrandom: {e}"
            );
        }
    }
    hex::encode(buf)
}

/// 16 hex characters of sha256: names derived from content (UIDs, backoff keys).
pub fn short_hash(data: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(data)[..8])
}

/// Writes a file readable by its owner only (it may hold Secrets: env values, tokens, keys),
/// atomically: a reader, or the next agent after a crash, sees the old or the new content,
/// never half of it (ext4 flushes a file renamed over another before the rename, auto_da_alloc).
pub fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, path)
}

/// An error with its whole source chain, for one log line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    nodelet_sandbox::shim::error_chain(err)
}
