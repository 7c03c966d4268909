//! `nodelet reset`, in the spirit of `kubeadm reset`: with the agent stopped, every pod is
//! stopped gracefully (its stop signal, its grace period, then SIGKILL) and released, then the
//! node's own state goes: the pod network's bridge, allocations and NAT table, the pod cgroups,
//! the built-in API's store, keys and kubeconfig, and the run directory. Each removal is printed.
//! Images stay (`nodelet images`), and so do the manifests and the configuration, which are the
//! operator's.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::network;
use crate::node::{self, Node};
use crate::paths::NodePaths;
use crate::runtime::{Liveness, Scope};

/// The longest a pod is given to stop; kubelet's default grace.
const MAX_GRACE: Duration = Duration::from_secs(30);

pub async fn reset(config: Config) -> anyhow::Result<()> {
    let paths = NodePaths::new(&config);
    let _lock =
        node::lock_run_dir(&paths).context("stop nodelet first (systemctl stop nodelet)")?;
    let node = Node::new(config.clone())?;
    let mut uids: Vec<String> = [paths.shims(), paths.pods_root()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    uids.sort();
    uids.dedup();
    for uid in &uids {
        drain(&node, &paths, uid).await;
    }
    release_network(&config).await;
    let kubepods = Path::new(config.cgroup_root.trim_start_matches('/')).join("kubepods");
    match nodelet_sandbox::cgroup::remove(&kubepods) {
        Ok(()) => println!("removed cgroups {}", kubepods.display()),
        Err(e) => eprintln!("cgroups {}: {}", kubepods.display(), crate::error_chain(&e)),
    }
    for path in [
        paths.root.join("api.db"),
        paths.root.join("pki"),
        paths.pods_root(),
        config.api_server.kubeconfig.clone(),
        paths.shims(),
        paths.control_socket(),
    ] {
        remove(&path);
    }
    let api_volumes = paths.api_volumes();
    match nodelet_sandbox::mount::unmount(&api_volumes) {
        Ok(()) => remove(&api_volumes),
        Err(e) => eprintln!("{}", crate::error_chain(&e)),
    }
    println!(
        "kept the images in {} and the manifests in {}",
        paths.images().display(),
        config.static_pod_path.display()
    );
    Ok(())
}

/// Stops one pod as its worker would have, then releases everything of it.
async fn drain(node: &Node, paths: &NodePaths, uid: &str) {
    let pod: Option<k8s_openapi::api::core::v1::Pod> = std::fs::read(paths.pod_record(uid))
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok());
    let (namespace, name) = pod
        .as_ref()
        .map_or(("default".to_owned(), uid.to_owned()), |p| {
            (
                p.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                p.metadata.name.clone().unwrap_or_default(),
            )
        });
    let grace = pod
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .map_or(MAX_GRACE, |s| {
            Duration::from_secs(s.max(0) as u64).min(MAX_GRACE)
        });
    if node.runtime.liveness(uid).await == Liveness::Alive {
        for signal in [None, Some(libc::SIGKILL)] {
            let running: Vec<_> = match node.runtime.state(uid).await {
                Ok(all) => all.into_iter().filter(|c| c.exit.is_none()).collect(),
                Err(_) => break,
            };
            if running.is_empty() {
                break;
            }
            for c in &running {
                let sig = signal.unwrap_or_else(|| crate::pod::worker::stop_signal(c));
                let _ = node.runtime.signal(uid, &c.id, sig).await;
            }
            let wait = if signal.is_some() {
                Duration::from_secs(5)
            } else {
                grace
            };
            let deadline = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < deadline {
                let any = node
                    .runtime
                    .state(uid)
                    .await
                    .map(|all| all.iter().any(|c| c.exit.is_none()))
                    .unwrap_or(false);
                if !any {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let logs = crate::runtime::PodName {
        namespace: &namespace,
        name: &name,
    };
    let errors = node
        .teardown_pod(uid, Scope::Pod { logs: Some(logs) })
        .await;
    for e in &errors {
        eprintln!("pod {namespace}/{name}: {e}");
    }
    println!("removed pod {namespace}/{name} ({uid})");
}

/// The pod network nodelet made: its bridge, its allocations, its NAT table, and the default
/// conflist it wrote (a conflist an operator wrote stays).
async fn release_network(config: &Config) {
    let Ok(list) = nodelet_cni_config::config::load_dir(&config.cni_conf_dir) else {
        return;
    };
    if let Some(bridge) = list.native_bridge() {
        match nodelet_netns::ns::open_here() {
            Ok(netlink) => match netlink.try_find_link(&bridge.bridge).await {
                Ok(Some(_)) => match netlink.delete_link(&bridge.bridge).await {
                    Ok(()) => println!("removed bridge {}", bridge.bridge),
                    Err(e) => eprintln!("bridge {}: {e}", bridge.bridge),
                },
                Ok(None) => {}
                Err(e) => eprintln!("bridge {}: {e}", bridge.bridge),
            },
            Err(e) => eprintln!("netlink: {e}"),
        }
        remove(&bridge.ipam.data_dir.join(&list.name));
    }
    for table in [network::masq::TABLE, network::hostports::TABLE] {
        match network::masq::delete_table(table).await {
            Ok(true) => println!("removed nftables table inet {table}"),
            Ok(false) => {}
            Err(e) => eprintln!("nftables: {}", crate::error_chain(&e)),
        }
    }
    if list
        .source
        .file_name()
        .is_some_and(|n| n == network::DEFAULT_CONFLIST)
    {
        remove(&list.source);
    }
}

fn remove(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Err(_) => return,
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match removed {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) => eprintln!("{}: {e}", path.display()),
    }
}
