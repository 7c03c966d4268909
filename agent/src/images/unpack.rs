//! Unpacking one image layer into an overlayfs lower directory: tar entries as they are, OCI
//! whiteouts turned into overlay whiteouts (a 0:0 character device for `.wh.<name>`, the
//! `trusted.overlay.opaque` xattr for `.wh..wh..opq`), see overlayfs(5) and the OCI image spec.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest as _, Sha256};

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
    #[error("whiteout {path}")]
    Whiteout {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let path = entry.path().map_err(Error::Read)?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::UnsafePath(path));
        }
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if file_name == OPAQUE {
            mark_opaque(&parent).map_err(|source| Error::Whiteout {
                path: path.clone(),
                source,
            })?;
        } else if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            whiteout(&parent.join(hidden)).map_err(|source| Error::Whiteout {
                path: path.clone(),
                source,
            })?;
        } else {
            entry
                .unpack_in(dest)
                .map_err(|source| Error::Entry { path, source })?;
        }
    }
    // Tar readers stop at the end-of-archive blocks; the diff id covers the padding after them.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(Error::Read)?;
    Ok(format!("sha256:{}", hex::encode(rest.hasher.finalize())))
}

fn mark_opaque(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    xattr::set(dir, "trusted.overlay.opaque", b"y")
}

fn whiteout(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
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
