//! Network namespace handles: opening a netlink socket inside a namespace, and running a closure
//! there (sysctls), each on a dedicated OS thread whose namespace switch is undone by a guard.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::{Error, Netlink, Result};

/// Puts the calling thread back in its original network namespace when dropped.
struct Guard {
    original: File,
}

impl Guard {
    fn enter(path: &Path) -> std::io::Result<Guard> {
        let original = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(path)?;
        setns(&target, CloneFlags::CLONE_NEWNET)?;
        Ok(Guard { original })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Failing to return would leave a thread in the wrong namespace: the thread is a
        // dedicated one and ends right after, so that can never leak into other work.
        let _ = setns(&self.original, CloneFlags::CLONE_NEWNET);
    }
}

/// Runs `f` on a fresh OS thread inside the network namespace at `path` (an nsfs file, such as
/// a pod's pinned `ns/net`).
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path_owned = path.to_owned();
    std::thread::spawn(move || {
        let _guard = Guard::enter(&path_owned)?;
        Ok(f())
    })
    .join()
    .expect("namespace thread panicked")
    .map_err(|source: std::io::Error| Error::Enter {
        path: path.display().to_string(),
        source,
    })
}

/// A netlink connection in the caller's own network namespace; the connection task runs on the
/// current tokio runtime.
pub fn open_here() -> Result<Netlink> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Connect {
        namespace: "host".into(),
        source,
    })?;
    tokio::spawn(connection);
    Ok(Netlink {
        handle,
        namespace: "host".into(),
    })
}

/// Runs async netlink work inside the network namespace at `path`: on a dedicated OS thread
/// that entered the namespace, with a netlink socket opened there and a current-thread runtime of
/// its own (the socket is registered with that runtime, never shared). The caller's runtime only
/// waits for the result.
pub async fn within<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = path.to_owned();
    let namespace = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        run_in(&path, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|source| Error::Connect {
                    namespace: namespace.clone(),
                    source,
                })?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|source| Error::Connect {
                        namespace: namespace.clone(),
                        source,
                    })?;
                tokio::spawn(connection);
                f(Netlink { handle, namespace }).await
            })
        })?
    })
    .await
    .expect("namespace task panicked")
}

/// An open handle on the caller's network namespace, for moving links into it.
pub fn current() -> std::io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}
