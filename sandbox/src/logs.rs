//! CRI container log records, as containerd writes them (`internal/cri/io/logger.go`):
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// containerd's `max_container_log_line_size`: longer lines are cut into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns a byte stream into log records, keeping an unfinished line until it ends.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes a record for every complete line in `data`, and `P` records for overlong ones.
    pub fn feed(&mut self, data: &[u8], now: Timestamp, out: &mut impl Write) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            self.emit_line(start, end, now, out)?;
            start = end + 1;
        }
        while self.pending.len() - start >= MAX_LINE {
            write_record(
                out,
                now,
                self.stream,
                true,
                &self.pending[start..start + MAX_LINE],
            )?;
            start += MAX_LINE;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn emit_line(
        &self,
        start: usize,
        end: usize,
        now: Timestamp,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let mut line = &self.pending[start..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return write_record(out, now, self.stream, false, b"");
        }
        while let Some(chunk) = chunks.next() {
            write_record(out, now, self.stream, chunks.peek().is_some(), chunk)?;
        }
        Ok(())
    }

    /// At end of stream, output without a final newline becomes a `P` record.
    pub fn finish(&mut self, now: Timestamp, out: &mut impl Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            write_record(out, now, self.stream, true, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn write_record(
    out: &mut impl Write,
    now: Timestamp,
    stream: Stream,
    partial: bool,
    content: &[u8],
) -> io::Result<()> {
    let tag = if partial { "P" } else { "F" };
    let mut record = format!("{now} {} {tag} ", stream.as_str()).into_bytes();
    record.extend_from_slice(content);
    record.push(b'\n');
    // One write per record, so the two streams' records never interleave within a line.
    out.write_all(&record)
}

/// kubelet's `containerLogMaxSize` and `containerLogMaxFiles` (10 MiB, 5 files by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// A container's CRI log file that rotates itself, as kubelet's container log manager does:
/// when the next record would take the file past `max_size`, the file is renamed to
/// `<n>.log.<YYYYMMDD-hhmmss>` and a fresh `<n>.log` is opened; rotated files beyond
/// `max_files - 1` are removed, oldest first. Records are never split across files.
pub struct LogFile {
    path: PathBuf,
    file: fs::File,
    written: u64,
    rotation: Rotation,
}

impl LogFile {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_owned(),
            file,
            written,
            rotation,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let stamp = Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
        let mut rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        let mut n = 1;
        while rotated.exists() {
            rotated = PathBuf::from(format!("{}.{stamp}.{n}", self.path.display()));
            n += 1;
        }
        fs::rename(&self.path, &rotated)?;
        self.file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.written = 0;
        self.prune()
    }

    /// Keeps the newest `max_files - 1` rotated files.
    fn prune(&self) -> io::Result<()> {
        let (Some(dir), Some(name)) = (
            self.path.parent(),
            self.path.file_name().and_then(|n| n.to_str()),
        ) else {
            return Ok(());
        };
        let prefix = format!("{name}.");
        let mut rotated: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let keep = self.rotation.max_files.saturating_sub(1);
        let excess = rotated.len().saturating_sub(keep);
        for old in &rotated[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}

impl Write for LogFile {
    /// One call is one record (see `write_record`): rotation happens between records.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One parsed record; `None` for lines that are not CRI records.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    Some(Record {
        timestamp,
        stream,
        partial: tag.split(|b| *b == b':').next() == Some(b"P"),
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> Timestamp {
        "2026-03-01T10:04:05.1234Z".parse().unwrap()
    }

    #[test]
    fn full_partial_and_overlong_lines() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        s.feed(b"hello\r\nwor", ts(), &mut out).unwrap();
        s.feed(b"ld\n\n", ts(), &mut out).unwrap();
        s.feed(b"tail", ts(), &mut out).unwrap();
        s.finish(ts(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-03-01T10:04:05.1234Z stdout F hello\n\
             2026-03-01T10:04:05.1234Z stdout F world\n\
             2026-03-01T10:04:05.1234Z stdout F \n\
             2026-03-01T10:04:05.1234Z stdout P tail\n"
        );
    }

    #[test]
    fn log_file_rotates_between_records_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("nodelet-logrot-{}", std::process::id()));
        let path = dir.join("0.log");
        let mut log = LogFile::open(
            &path,
            Rotation {
                max_size: 100,
                max_files: 3,
            },
        )
        .unwrap();
        let mut s = LineSplitter::new(Stream::Stdout);
        for i in 0..40 {
            s.feed(format!("line {i}\n").as_bytes(), ts(), &mut log)
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            3,
            "the live file and two rotated ones: {names:?}"
        );
        assert_eq!(names[0], "0.log");
        for name in &names {
            let text = fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() <= 100, "{name} holds {} bytes", text.len());
            assert!(
                text.lines().all(|l| parse_record(l.as_bytes()).is_some()),
                "whole records only"
            );
        }
        assert!(fs::read_to_string(&path).unwrap().ends_with("line 39\n"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_line_is_cut_into_partials() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut data = vec![b'x'; MAX_LINE * 2 + 5];
        data.push(b'\n');
        s.feed(&data, ts(), &mut out).unwrap();
        let records: Vec<Record> = out
            .split_inclusive(|b| *b == b'\n')
            .filter_map(parse_record)
            .collect();
        assert_eq!(
            records.iter().map(|r| r.partial).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(
            records.iter().map(|r| r.content.len()).sum::<usize>(),
            MAX_LINE * 2 + 5
        );
        assert!(records.iter().all(|r| r.stream == "stderr"));
    }
}
