//! Work in progress in the image store's `tmp/`: each entry (a download, a layer being unpacked,
//! an extracted archive) is held under flock(2) by the process doing the work, so a sweep by any
//! process removes only what an interrupted pull or import left behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A `tmp/` entry younger than this is never swept, locked or not.
const SCRATCH_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Work in progress under `tmp/` (a download, an unpacking layer, an extracted archive): held
/// under flock(2) while it lives, so a sweep in any process leaves it alone, and removed when
/// dropped unless it was renamed into place first.
pub struct Scratch {
    path: PathBuf,
    _lock: Flock<fs::File>,
}

impl Scratch {
    /// Locks the entry just created at `path`.
    pub fn lock(path: PathBuf) -> io::Result<Scratch> {
        let file = fs::File::open(&path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok(Scratch { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
    }
}

/// Removes every entry of `dir` no process holds a lock on (work in progress always does), if it
/// is older than a few seconds (the moment between creating an entry and locking it).
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let settled = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= SCRATCH_SETTLE));
        let path = entry.path();
        let Ok(file) = fs::File::open(&path) else {
            continue;
        };
        if !settled || Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err() {
            continue;
        }
        if remove_any(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
