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

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

/// The thread that does the work inside pods' namespaces, one job at a time, with a runtime of
/// its own. Starting a thread and a runtime per job cost more than the netlink work itself.
fn executor() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<Job>> {
    static EXECUTOR: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    EXECUTOR.get_or_init(|| std::sync::Mutex::new(spawn_executor()))
}

fn spawn_executor() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .expect("build the namespace thread's runtime");
            for job in rx {
                job(&runtime);
            }
        })
        .expect("start the namespace thread");
    tx
}

/// Runs async netlink work inside the network namespace at `path`, on the namespace thread: it
/// enters the namespace (a guard brings it back), opens a netlink socket there, and runs `f`
/// with it; the socket is closed as soon as `f` is done, so it never keeps a namespace alive.
pub async fn within<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = path.to_owned();
    let namespace = path.display().to_string();
    let label = namespace.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |runtime| {
        let guard = match Guard::enter(&path) {
            Ok(guard) => guard,
            Err(source) => {
                let _ = tx.send(Err(Error::Enter {
                    path: namespace,
                    source,
                }));
                return;
            }
        };
        let result = runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| Error::Connect {
                    namespace: namespace.clone(),
                    source,
                })?;
            // The work first: a closure that drops its handle early ends the connection too.
            tokio::select! {
                biased;
                result = f(Netlink { handle, namespace: namespace.clone() }) => result,
                () = connection => Err(Error::Connect {
                    namespace,
                    source: std::io::Error::other("netlink connection ended"),
                }),
            }
        });
        // The socket is closed by now; answer before the way back to the node's namespace.
        let _ = tx.send(result);
        drop(guard);
    });
    let sent = {
        let mut sender = executor().lock().expect("executor lock");
        sender.send(job).or_else(|std::sync::mpsc::SendError(job)| {
            // The thread died (a job panicked): start another.
            *sender = spawn_executor();
            sender.send(job)
        })
    };
    if sent.is_err() {
        return Err(Error::Enter {
            path: label,
            source: std::io::Error::other("namespace thread unavailable"),
        });
    }
    rx.await.unwrap_or_else(|_| {
        Err(Error::Enter {
            path: label,
            source: std::io::Error::other("namespace job panicked"),
        })
    })
}

/// An open handle on the caller's network namespace, for moving links into it.
pub fn current() -> std::io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}
