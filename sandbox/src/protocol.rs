//! The typed protocol between the agent and a pod's shim: one JSON object per line over the
//! shim's unix socket, one request per connection (a `Subscribe` connection then streams events).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::spec::{ContainerSpec, ExecSpec};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create and start one container instance.
    Create { spec: Box<ContainerSpec> },
    /// Send a signal to a running container's first process.
    Signal { id: String, signal: i32 },
    /// Every container instance the shim knows, running or exited.
    State,
    /// Forget an exited instance.
    Remove { id: String },
    /// Kill everything left, release the pod's namespaces and exit.
    Shutdown,
    /// Close the shim's end of a container's stdin FIFO: the process reads EOF once every
    /// attach session has closed its own (`stdinOnce`).
    CloseStdin { id: String },
    /// The controlling side of a `tty: true` instance's terminal, sent with the `Done` answer
    /// (SCM_RIGHTS): attach sessions write their input to it and set its window size. Closing
    /// stdin (`CloseStdin`) hangs the terminal up, as containerd closes its console.
    Terminal { id: String },
    /// Keep the connection open and receive an `Event` line per container exit.
    Subscribe,
    /// Run a command in a running container without a client (probes, hooks): the shim forks
    /// it (no helper binary to load), keeps at most 10 KiB of its stdout and stderr together,
    /// and answers `Ran` when it ends, or when `timeout_ms` passes (it is then killed).
    Exec {
        spec: Box<ExecSpec>,
        timeout_ms: Option<u64>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Created {
        pid: i32,
    },
    Done,
    State {
        shim_pid: i32,
        containers: Vec<ContainerStatus>,
    },
    Exited {
        id: String,
    },
    Ran {
        code: i32,
        output: String,
        timed_out: bool,
    },
    Error {
        message: String,
    },
}

/// One container instance as the shim saw it; also its on-disk record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub pid: i32,
    pub started_at: Timestamp,
    pub exit: Option<Exit>,
    /// The spec's labels, as given at creation.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    /// The exit status, or 128 + signal number for a process killed by a signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub finished_at: Timestamp,
    pub oom_killed: bool,
}

/// Writes one message as a JSON line.
pub fn write_message<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// Reads one JSON line; `None` at end of stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(
    input: &mut impl BufRead,
) -> io::Result<Option<T>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A blocking call: connect, send, read the one response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    write_message(&mut stream, request)?;
    read_message(&mut BufReader::new(stream))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "shim closed the connection"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &Request::Signal {
                id: "abc".into(),
                signal: 15,
            },
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            "{\"op\":\"signal\",\"id\":\"abc\",\"signal\":15}\n"
        );
        let back: Request = read_message(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(
            back,
            Request::Signal {
                id: "abc".into(),
                signal: 15
            }
        );
        assert!(read_message::<Request>(&mut &b""[..]).unwrap().is_none());
        assert!(read_message::<Request>(&mut &b"{\"op\":\"fly\"}\n"[..]).is_err());
    }
}
