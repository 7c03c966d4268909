//! Unpacking one image layer into an overlayfs lower directory: tar entries as they are, OCI
//! whiteouts turned into overlay whiteouts (a 0:0 character device for `.wh.<name>`, the
//! `trusted.overlay.opaque` xattr for `.wh..wh..opq`), see overlayfs(5) and the OCI image spec.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::beneath::{self, Beneath};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read layer")]
    Read(#[source] io::Error),
    #[error("read zstd frame header")]
    Zstd(#[source] ruzstd::decoding::errors::FrameDecoderError),
    #[error("unpack {path}")]
    Entry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entry {0} leaves the layer")]
    UnsafePath(PathBuf),
    #[error("entry {0} goes through a symlink")]
    ThroughSymlink(PathBuf),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Counts the sha256 of everything read through it: the layer's diff id.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks a plain, gzip- or zstd-compressed layer into `dest`; returns its diff id (`sha256:<hex>` of
/// the uncompressed tar).
pub fn unpack(blob: impl Read, dest: &Path) -> Result<String, Error> {
    std::fs::create_dir_all(dest).map_err(|source| Error::Entry {
        path: dest.to_owned(),
        source,
    })?;
    let mut blob = BufReader::new(blob);
    let magic = blob.fill_buf().map_err(Error::Read)?;
    let tar_stream: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(blob)),
        // ruzstd: a pure-Rust decoder, no C library to build.
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(blob).map_err(Error::Zstd)?)
        }
        _ => Box::new(blob),
    };
    let mut archive = tar::Archive::new(Hashing {
        inner: tar_stream,
        hasher: Sha256::new(),
    });
    let mut root = Beneath::open(dest).map_err(|source| Error::Entry {
        path: dest.to_owned(),
        source,
    })?;
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let raw = entry.path().map_err(Error::Read)?.into_owned();
        let path = beneath::relative(&raw).ok_or_else(|| Error::UnsafePath(raw.clone()))?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            continue; // the layer's root itself
        };
        let name = name.to_owned();
        let fail = |source: io::Error| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                Error::ThroughSymlink(raw.clone())
            } else {
                Error::Entry {
                    path: raw.clone(),
                    source,
                }
            }
        };
        let dir = root.dir(parent).map_err(fail)?;
        let dir = dir.as_fd();
        let done = match name.to_str() {
            Some(OPAQUE) => mark_opaque(dir),
            Some(n) if n.starts_with(WHITEOUT_PREFIX) => {
                whiteout(dir, OsStr::new(&n[WHITEOUT_PREFIX.len()..]))
            }
            _ => write_entry(&mut entry, dir, &name, &root),
        };
        done.map_err(fail)?;
        // An entry may have replaced the directory the cache holds (a file over an empty
        // directory of the same name): look it up again then, and only then.
        root.forget_if(&path);
    }
    // Tar readers stop at the end-of-archive blocks; the diff id covers the padding after them.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(Error::Read)?;
    Ok(format!("sha256:{}", hex::encode(rest.hasher.finalize())))
}

/// `trusted.overlay.opaque` on the directory: nothing of the layers below shows through it.
fn mark_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let dir = std::fs::File::from(dir.try_clone_to_owned()?);
    xattr::FileExt::set_xattr(&dir, "trusted.overlay.opaque", b"y")
}

/// An overlay whiteout, a 0:0 character device, in place of whatever the name held.
fn whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    if [OsStr::new(""), OsStr::new("."), OsStr::new("..")].contains(&name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "whiteout of no file",
        ));
    }
    replacing(dir, name, || {
        mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
    })
}

/// Makes a new entry with `make`; where the name is taken (an earlier entry of the layer), the
/// old one is removed first and `make` tried again. Most names are new: one call, not two.
fn replacing<T>(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mut make: impl FnMut() -> nix::Result<T>,
) -> io::Result<T> {
    match make() {
        Err(Errno::EEXIST) => {
            remove_existing(dir, name)?;
            Ok(make()?)
        }
        other => Ok(other?),
    }
}

/// Removes a non-directory (or an empty directory) at `name`, so a new entry takes its place;
/// nothing is there is fine.
fn remove_existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => Ok(unlinkat(dir, name, UnlinkatFlags::RemoveDir)?),
        Err(e) => Err(e.into()),
    }
}

/// Writes one tar entry as `name` in `dir`: its content, owner, mode, extended attributes and
/// modification time, following no symlink.
fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    root: &Beneath,
) -> io::Result<()> {
    let header = entry.header().clone();
    let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
    let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mtime = TimeSpec::new(header.mtime()? as i64, 0);
    let kind = header.entry_type();
    let xattrs = pax_xattrs(entry)?;
    let made: Option<OwnedFd> = match kind {
        EntryType::Directory => {
            match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            Some(beneath::open_in(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )?)
        }
        // The tar crate expands a GNU sparse entry's data as it is read.
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
            let fd = replacing(dir, name, || beneath::open_in(dir, name, create))?;
            let mut file = std::fs::File::from(fd);
            io::copy(entry, &mut file)?;
            Some(file.into())
        }
        EntryType::Symlink => {
            let target = entry.link_name()?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "symlink without target")
            })?;
            replacing(dir, name, || symlinkat(target.as_ref(), dir, name))?;
            fchownat(dir, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            utimensat(dir, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)?;
            return Ok(());
        }
        EntryType::Link => {
            let target = entry.link_name()?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "hard link without target")
            })?;
            // A hard link names an earlier entry of this layer, never a path outside it.
            let unsafe_link = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("hard link to {} leaves the layer", target.display()),
                )
            };
            if target.is_absolute() {
                return Err(unsafe_link());
            }
            let target = beneath::relative(&target).ok_or_else(unsafe_link)?;
            let (Some(from_dir), Some(from_name)) = (target.parent(), target.file_name()) else {
                return Err(unsafe_link());
            };
            let from = root.existing_dir(from_dir)?;
            replacing(dir, name, || {
                linkat(from.as_fd(), from_name, dir, name, AtFlags::empty())
            })?;
            return Ok(());
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let sflag = match kind {
                EntryType::Char => SFlag::S_IFCHR,
                EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let dev = if kind == EntryType::Fifo {
                0
            } else {
                makedev(
                    header.device_major()?.unwrap_or(0).into(),
                    header.device_minor()?.unwrap_or(0).into(),
                )
            };
            replacing(dir, name, || mknodat(dir, name, sflag, mode, dev))?;
            fchownat(dir, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            // A device is never opened to change it: fchmodat on the node just made (no
            // symlink: mknodat made it), past the umask mknodat applied.
            fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)?;
            utimensat(dir, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)?;
            return Ok(());
        }
        // PAX and GNU long-name headers are read by the tar crate; nothing else is a file.
        _ => None,
    };
    let Some(fd) = made else {
        return Ok(());
    };
    // Owner first: chown(2) clears set-user-ID and set-group-ID, which fchmod then sets.
    fchown(&fd, owner.0, owner.1)?;
    fchmod(&fd, mode)?;
    let file = std::fs::File::from(fd);
    for (key, value) in &xattrs {
        xattr::FileExt::set_xattr(&file, key, value)?;
    }
    futimens(&file, &mtime, &mtime)?;
    Ok(())
}

/// Extended attributes the entry carries as PAX `SCHILY.xattr.<name>` records.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in extensions {
        let ext = ext?;
        if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
            out.push((name.to_owned(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_diff_id_is_checked() {
        let dest = std::env::temp_dir().join(format!("nodelet-unpack-{}", std::process::id()));
        let data = layer(&[
            ("etc/motd", b"hi"),
            ("etc/.wh.gone", b""),
            ("var/.wh..wh..opq", b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let diff_id = unpack(gz.finish().unwrap().as_slice(), &dest).unwrap();
        assert_eq!(
            diff_id,
            crate::images::store::sha256_of(data.as_slice()).unwrap()
        );
        assert_eq!(std::fs::read(dest.join("etc/motd")).unwrap(), b"hi");
        assert!(std::fs::metadata(dest.join("etc/gone"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            xattr::get(dest.join("var"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        std::fs::remove_dir_all(&dest).unwrap();
    }

    #[test]
    fn zstd_layers_unpack_with_their_diff_id() {
        let dest = tempfile::tempdir().unwrap();
        let data = layer(&[("etc/motd", b"zstd"), ("bin/.wh.old", b"")]);
        let compressed = ruzstd::encoding::compress_to_vec(
            data.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let diff_id = unpack(compressed.as_slice(), dest.path()).unwrap();
        assert_eq!(
            diff_id,
            crate::images::store::sha256_of(data.as_slice()).unwrap()
        );
        assert_eq!(
            std::fs::read(dest.path().join("etc/motd")).unwrap(),
            b"zstd"
        );
        // A truncated frame is an error, not a short layer.
        let broken = &compressed[..compressed.len() / 2];
        assert!(unpack(broken, &dest.path().join("x")).is_err());
    }

    /// A raw tar entry: `tar::Builder` itself refuses the names a hostile layer uses.
    fn raw(kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        let mut block = header.as_bytes().to_vec();
        block.extend_from_slice(data);
        block.resize(block.len().div_ceil(512) * 512, 0);
        block
    }

    fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = entries.concat();
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// Every way a layer can aim a name through a symlink: whiteouts, opaque markers, files,
    /// directories and hard links are refused (or replace the symlink itself), and nothing
    /// appears outside the layer.
    #[test]
    fn hostile_layers_write_nothing_outside() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"host").unwrap();
        let out = outside.path().to_str().unwrap();
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "whiteout via absolute symlink",
                vec![
                    raw(Symlink, "evil", out, b""),
                    raw(Regular, "evil/.wh.secret", "", b""),
                ],
            ),
            (
                "whiteout via relative symlink",
                vec![
                    raw(Symlink, "up", "../../../../../../..", b""),
                    raw(Regular, "up/tmp/.wh.x", "", b""),
                ],
            ),
            (
                "opaque via symlink",
                vec![
                    raw(Symlink, "evil", out, b""),
                    raw(Regular, "evil/.wh..wh..opq", "", b""),
                ],
            ),
            (
                "file via symlink dir",
                vec![
                    raw(Symlink, "evil", out, b""),
                    raw(Regular, "evil/planted", "", b"x"),
                ],
            ),
            (
                "dir via symlink dir",
                vec![
                    raw(Symlink, "evil", out, b""),
                    raw(Directory, "evil/pwned-dir", "", b""),
                ],
            ),
            (
                "whiteout of ..",
                vec![
                    raw(Directory, "d", "", b""),
                    raw(Regular, "d/.wh...", "", b""),
                ],
            ),
            (
                "hard link out by ..",
                vec![raw(Link, "l", "../secret", b"")],
            ),
            (
                "hard link to absolute",
                vec![raw(Link, "l", secret.to_str().unwrap(), b"")],
            ),
            (
                "hard link via symlink",
                vec![
                    raw(Symlink, "evil", out, b""),
                    raw(Link, "l", "evil/secret", b""),
                ],
            ),
        ];
        for (what, entries) in cases {
            let dest = tempfile::tempdir().unwrap();
            let result = unpack(archive(&entries).as_slice(), dest.path());
            assert!(result.is_err(), "{what}: accepted");
            let left: Vec<_> = std::fs::read_dir(outside.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("secret")], "{what}");
            assert_eq!(std::fs::read(&secret).unwrap(), b"host", "{what}");
            assert!(
                xattr::get(outside.path(), "trusted.overlay.opaque")
                    .unwrap()
                    .is_none(),
                "{what}"
            );
        }
        // A file entry over a symlink replaces the symlink; it never writes through it.
        let dest = tempfile::tempdir().unwrap();
        let entries = [
            raw(Symlink, "f", secret.to_str().unwrap(), b""),
            raw(Regular, "f", "", b"layer"),
        ];
        unpack(archive(&entries).as_slice(), dest.path()).unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"host");
        assert_eq!(std::fs::read(dest.path().join("f")).unwrap(), b"layer");
    }

    /// What a layer holds arrives as it is: modes (setuid too), owners, times, links, fifos.
    #[test]
    fn entries_keep_their_kind_owner_mode_and_time() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mut builder = tar::Builder::new(Vec::new());
        let mut add =
            |kind: tar::EntryType, path: &str, mode: u32, link: Option<&str>, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(data.len() as u64);
                h.set_mode(mode);
                h.set_uid(1234);
                h.set_gid(5678);
                h.set_mtime(1_000_000);
                if let Some(l) = link {
                    h.set_link_name(l).unwrap();
                }
                h.set_cksum();
                builder.append_data(&mut h, path, data).unwrap();
            };
        add(tar::EntryType::Directory, "usr/bin", 0o750, None, b"");
        add(tar::EntryType::Regular, "usr/bin/su", 0o4755, None, b"#!");
        add(
            tar::EntryType::Symlink,
            "usr/bin/sh",
            0o777,
            Some("busybox"),
            b"",
        );
        add(
            tar::EntryType::Link,
            "usr/bin/su2",
            0o4755,
            Some("usr/bin/su"),
            b"",
        );
        add(tar::EntryType::Fifo, "run/fifo", 0o600, None, b"");
        let data = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(data.as_slice(), dest.path()).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(dest.path().join(p)).unwrap();
        assert_eq!(meta("usr/bin").permissions().mode() & 0o7777, 0o750);
        assert_eq!(meta("usr/bin/su").permissions().mode() & 0o7777, 0o4755);
        assert_eq!(
            (meta("usr/bin/su").uid(), meta("usr/bin/su").gid()),
            (1234, 5678)
        );
        assert_eq!(meta("usr/bin/su").mtime(), 1_000_000);
        assert_eq!(meta("usr/bin/su").ino(), meta("usr/bin/su2").ino());
        assert_eq!(
            std::fs::read_link(dest.path().join("usr/bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(meta("usr/bin/sh").uid(), 1234);
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &meta("run/fifo").file_type()
        ));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let dest = std::env::temp_dir().join(format!("nodelet-unpack-esc-{}", std::process::id()));
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // Write the name raw: tar::Builder itself refuses "..".
        header.as_gnu_mut().unwrap().name[..10].copy_from_slice(b"../escaped");
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).unwrap();
        let data = builder.into_inner().unwrap();
        assert!(matches!(
            unpack(data.as_slice(), &dest),
            Err(Error::UnsafePath(_))
        ));
        let _ = std::fs::remove_dir_all(&dest);
    }
}
