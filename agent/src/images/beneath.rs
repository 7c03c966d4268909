//! A directory that files are written into by untrusted names (the entries of an image's
//! layers): every path is resolved by the kernel beneath the directory and without following any
//! symlink (openat2(2) `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and every file is made with the
//! `*at` calls relative to its parent's descriptor, so no name can reach outside, whatever the
//! layer put on its way.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// The root of a tree being written, and its most recently used directory.
pub struct Beneath {
    root: OwnedFd,
    /// Entries of one directory mostly come together in a tar stream: one lookup for all.
    last: Option<(PathBuf, OwnedFd)>,
}

/// `path` as relative components (leading `/` and `.` dropped), or `None` if it has `..`.
pub fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// `RESOLVE_NO_SYMLINKS` covers the last component too, with `ELOOP` (where `O_NOFOLLOW`
/// would give `ENOTDIR` for a directory open, and hide why).
fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

fn open_dir(at: BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    openat2(at, path, how(OFlag::O_RDONLY | OFlag::O_DIRECTORY))
}

impl Beneath {
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let root = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath { root, last: None })
    }

    /// The directory at `rel` (relative, no `..`), made (0755) where missing. A symlink on the
    /// way is an error (`ELOOP`), as is anything that is not a directory (`ENOTDIR`).
    pub fn dir(&mut self, rel: &Path) -> io::Result<OwnedFd> {
        let cached = self.last.as_ref().is_some_and(|(p, _)| p == rel);
        if !cached {
            let fd = match open_dir(self.root.as_fd(), rel) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => self.make_dirs(rel)?,
                Err(e) => return Err(e.into()),
            };
            self.last = Some((rel.to_owned(), fd));
        }
        self.last.as_ref().expect("cached directory").1.try_clone()
    }

    /// An existing directory at `rel`, without making anything.
    pub fn existing_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        Ok(open_dir(self.root.as_fd(), rel)?)
    }

    /// Walks `rel` one component at a time, making each missing one.
    fn make_dirs(&self, rel: &Path) -> io::Result<OwnedFd> {
        let mut current = open_dir(self.root.as_fd(), Path::new(""))?;
        for part in rel.iter() {
            current = match open_dir(current.as_fd(), Path::new(part)) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(current.as_fd(), part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir(current.as_fd(), Path::new(part))?
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(current)
    }

    /// Forgets the cached directory if it is `rel`, which an entry may just have replaced.
    pub fn forget_if(&mut self, rel: &Path) {
        if self.last.as_ref().is_some_and(|(p, _)| p == rel) {
            self.last = None;
        }
    }
}

/// Opens `name` in `dir` without following a symlink (for changing what was just made).
pub fn open_in(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    openat2(dir, name, how(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_on_the_way_are_refused_and_nothing_leaves_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("..", root.path().join("up")).unwrap();
        std::os::unix::fs::symlink("a", root.path().join("inside")).unwrap();
        let mut b = Beneath::open(root.path()).unwrap();
        for path in ["abs", "abs/x/y", "up/x", "inside/x"] {
            let err = b.dir(Path::new(path)).expect_err(path);
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{path}: {err}");
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        b.dir(Path::new("a/b/c")).unwrap();
        assert!(root.path().join("a/b/c").is_dir());
        assert_eq!(
            relative(Path::new("/./etc//x")),
            Some(PathBuf::from("etc/x"))
        );
        assert_eq!(relative(Path::new("a/../../x")), None);
    }
}
