//! nodelet's built-in Kubernetes API: on a machine with no control plane, the stock `kubectl`
//! (1.27–1.33) drives pods through it exactly as against a real cluster, and the agent itself
//! consumes its pods from it through the same client code it uses with kube-apiserver.
//!
//! ```text
//!  kubectl ──HTTPS (client cert | token)──▶ http: route ─▶ handlers ─▶ store (memory + redb)
//!                                                   └──▶ watch ◀── changes ──┘
//!  controllers (scheduler, namespaces) ◀── changes; write through handlers
//! ```

mod controllers;
mod dashboard;
mod discovery;
pub mod error;
mod handlers;
mod http;
mod metrics;
mod objects;
mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
mod resource;
pub mod selector;
pub mod serviceaccounts;
mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

pub use store::{Store, StoreError};

pub struct Options<'a> {
    pub address: SocketAddr,
    /// Where pods reach it too (the pod network's gateway), if anywhere.
    pub pod_address: Option<SocketAddr>,
    /// The embedded database file.
    pub database: PathBuf,
    pub pki: &'a pki::Pki,
    /// Where the admin kubeconfig is written (mode 0600).
    pub kubeconfig: PathBuf,
    /// This node: `pods/log`, `exec`, `attach` and `portforward` of its pods are served in process.
    pub node_name: String,
    pub kubelet: Option<crate::kubelet::Kubelet>,
    /// The dashboard, and where its terminal's files are (None: the first place a build or a
    /// package puts them).
    pub dashboard: bool,
    pub dashboard_assets: Option<PathBuf>,
}

/// Starts the API on `options.address`; returns once it is listening and the kubeconfig is written.
pub async fn start(options: Options<'_>) -> anyhow::Result<()> {
    let store = Arc::new(open_store(&options.database).await?);
    let fresh = store
        .get(resource::Resource::Namespaces, "", "default")
        .is_none();
    handlers::seed(&store).map_err(|e| anyhow::anyhow!("seed namespaces: {}", e.message))?;
    if fresh && options.dashboard {
        dashboard::seed(&store).map_err(|e| anyhow::anyhow!("seed namespaces: {}", e.message))?;
    }
    let pki = options.pki;
    let listener = tokio::net::TcpListener::bind(options.address)
        .await
        .with_context(|| format!("listen on {}", options.address))?;
    let address = listener.local_addr()?;
    let host = match address.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("https://{host}:{}", address.port());
    pki::write_private(&options.kubeconfig, pki.kubeconfig(&url).as_bytes())?;
    let acceptor = http::acceptor(pki)?;
    let server = Arc::new(http::Server::new(
        store.clone(),
        pki.token.clone(),
        serviceaccounts::Tokens::new(pki.service_account_key.clone()),
        address.to_string(),
        options.node_name,
        options.kubelet,
        options
            .dashboard
            .then(|| dashboard::assets(options.dashboard_assets.as_deref())),
    ));
    if let Some(pod_address) = options.pod_address.filter(|a| *a != address) {
        let listener = listen_freely(pod_address)
            .with_context(|| format!("listen for pods on {pod_address}"))?;
        tokio::spawn(http::serve(listener, acceptor.clone(), server.clone()));
        info!(address = %pod_address, "built-in Kubernetes API serving pods");
    }
    tokio::spawn(http::serve(listener, acceptor, server));
    let ca_pem = String::from_utf8_lossy(&pki.ca.to_pem()?).into_owned();
    let service = options.pod_address.unwrap_or(options.address);
    tokio::spawn(controllers::run(store, ca_pem, service, options.dashboard));
    info!(%url, kubeconfig = %options.kubeconfig.display(), "built-in Kubernetes API serving");
    Ok(())
}

/// A listener on an address the node may not have yet (`IP_FREEBIND`): the pod network's
/// gateway appears on the bridge with the first pod.
fn listen_freely(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // IP_FREEBIND binds IPv6 sockets as well (the kernel checks it for both families).
    socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(address),
    )?;
    socket::listen(&fd, socket::Backlog::new(1024)?)?;
    let std_listener = std::net::TcpListener::from(fd);
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

/// Opens the store once `nodelet check-store` has read it through in a process of its own: redb
/// panics on some damage (an abort in a release build), which must stop that check, not the
/// agent and its pods.
async fn open_store(path: &std::path::Path) -> Result<Store, store::StoreError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nodelet"));
        let checked = tokio::process::Command::new(exe)
            .arg("check-store")
            .arg(path)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match checked {
            Ok(out) if out.status.success() => {}
            Ok(out) if out.status.code().is_some() => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let message = stderr.trim().trim_start_matches("nodelet: ").to_owned();
                return Err(store::StoreError::Checked(message));
            }
            Ok(_) => {
                return Err(store::StoreError::Corrupt {
                    path: path.display().to_string(),
                    reason: "reading it crashed the store's reader".to_owned(),
                })
            }
            Err(e) => tracing::warn!(error = %e, "could not run the store check; opening directly"),
        }
    }
    Store::open(path)
}

/// Go's name for this machine's architecture (`kubernetes.io/arch`, `/version`'s platform).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
