//! CRI container log records, as containerd writes them (`internal/cri/io/logger.go`):
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`.

use std::io::{self, Write};

use jiff::Timestamp;

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
