//! The pod network: the CNI conflist is its configuration; `bridge` + `host-local` is done
//! natively over netlink (no fork), following the bridge plugin step by step (cni.md §2.2), and
//! leaves the same kernel and disk state. Setup fails fast and rolls back; teardown is best
//! effort, idempotent, and collects every error.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nodelet_cni_config::config::{self as cni, Bridge, NetworkList};
use nodelet_cni_config::hostlocal::{self, Allocation, DiskStore};
use nodelet_netns::rtnetlink::packet_route::link::LinkAttribute;
use nodelet_netns::{ns, route::Origin, sysctl, Netlink};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;

pub mod hostports;
pub mod masq;
mod plugins;

/// The pod's interface name, as containerd names the default network's.
pub const IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] cni::Error),
    #[error("write default CNI config {path}")]
    WriteDefault {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid podCIDR {0:?}")]
    PodCidr(String),
    #[error("network {network}: chained or non-bridge plugins ({plugins}) are not supported yet; use bridge with host-local")]
    NotNative { network: String, plugins: String },
    #[error("allocate pod address")]
    Ipam(#[from] hostlocal::Error),
    #[error(transparent)]
    Netlink(#[from] nodelet_netns::Error),
    #[error("container veth name provided ({0}) already exists")]
    IfnameTaken(String),
    #[error("could not find a free host veth name")]
    NoVethName,
    #[error("IPAM plugin returned missing IP config")]
    NoAddress,
    #[error(transparent)]
    Plugin(#[from] plugins::Error),
    #[error("ipMasq")]
    Masq(#[from] masq::Error),
}

/// What a pod got from the network, kept beside its shim so teardown and re-adoption need
/// nothing else (nodelet's libcni-like cache).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub network: String,
    pub ifname: String,
    /// The host end of the pod's veth (native path).
    pub host_veth: String,
    pub ips: Vec<(IpAddr, u8)>,
    /// The chain's final ADD result and CNI_ARGS, when plugins were executed (for their DEL).
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub args: Vec<(String, String)>,
}

impl Attachment {
    pub fn pod_ip(&self) -> Option<IpAddr> {
        self.ips
            .iter()
            .map(|(ip, _)| *ip)
            .find(IpAddr::is_ipv4)
            .or(self.ips.first().map(|(ip, _)| *ip))
    }
}

/// How long a checked bridge (and its gateway) is trusted before the next pod checks it again.
const BRIDGE_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Network {
    list: NetworkList,
    bin_dirs: Vec<PathBuf>,
    /// libcni's cache directory (`<cniDataDir>`, holding `results/`).
    cache_dir: PathBuf,
    /// The bridge's index once it was made ready with its one-range gateways, and when: pods
    /// wired in the next `BRIDGE_RECHECK` skip those checks. Forgotten when attaching to it fails.
    bridge_ready: std::sync::Mutex<Option<(u32, std::time::Instant)>>,
}

/// The pod a network operation is for.
pub struct PodRef<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl PodRef<'_> {
    /// CNI_ARGS as containerd sends them.
    fn args(&self) -> Vec<(String, String)> {
        vec![
            ("K8S_POD_NAMESPACE".into(), self.namespace.into()),
            ("K8S_POD_NAME".into(), self.name.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), self.uid.into()),
            ("K8S_POD_UID".into(), self.uid.into()),
        ]
    }
}

/// Loads the node's network from the CNI config directory, writing nodelet's default first if
/// the directory has none.
/// The conflist nodelet writes when the configuration directory has none.
pub const DEFAULT_CONFLIST: &str = "10-nodelet.conflist";

pub fn load(config: &Config) -> Result<NetworkList, Error> {
    let dir = &config.cni_conf_dir;
    let has_config = std::fs::read_dir(dir).map(|d| {
        d.flatten().any(|e| {
            matches!(
                e.path().extension().and_then(|x| x.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
    });
    if !has_config.unwrap_or(false) {
        let cidr: IpNet = config
            .pod_cidr
            .parse()
            .map_err(|_| Error::PodCidr(config.pod_cidr.clone()))?;
        let path = dir.join(DEFAULT_CONFLIST);
        let text = cni::default_conflist("nodelet", cidr, &config.cni_data_dir.join("networks"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| Error::WriteDefault {
            path: path.clone(),
            source,
        })?;
        info!(path = %path.display(), pod_cidr = %cidr, "wrote default CNI configuration");
    }
    let list = cni::load_dir(dir)?;
    let plugins: Vec<&str> = list.plugins.iter().map(|p| p.kind.as_str()).collect();
    info!(
        file = %list.source.display(),
        network = %list.name,
        plugins = %plugins.join(","),
        native = list.native_bridge().is_some(),
        "pod network"
    );
    if masquerades(&list.bytes) {
        warn!(
            file = %list.source.display(),
            "this CNI network masquerades (ipMasq: true): pods reach other networks with the \
             node's address, not their own, and the network is not flat; set cniConfDir to a \
             directory with nodelet's own conflist to keep pod addresses (see docs/network.md)"
        );
    }
    Ok(list)
}

/// Whether any plugin of a conflist (or a single conf) has `ipMasq: true`.
fn masquerades(bytes: &[u8]) -> bool {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    let plugins = doc["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![doc.clone()]);
    plugins
        .iter()
        .any(|p| p["ipMasq"] == serde_json::Value::Bool(true))
}

impl Network {
    pub fn new(list: NetworkList, config: &Config) -> Result<Network, Error> {
        Ok(Network {
            list,
            bin_dirs: config.cni_bin_dirs.clone(),
            cache_dir: config.cni_data_dir.clone(),
            bridge_ready: std::sync::Mutex::new(None),
        })
    }

    /// A netlink connection in the node's namespace, one per operation: a shared socket would
    /// refuse concurrent dumps from parallel pod workers (EBUSY).
    fn host(&self) -> Result<Netlink, Error> {
        Ok(ns::open_here()?)
    }

    /// The node's address on the pod network (the bridge's gateway, IPv4 first): every pod
    /// reaches it, so the built-in API serves pods there.
    pub fn gateway(&self) -> Option<IpAddr> {
        let bridge = self.list.native_bridge().filter(|b| b.is_gateway)?;
        let gateways = bridge.ipam.ranges.iter().flatten().map(|r| r.gateway);
        let all: Vec<IpAddr> = gateways.collect();
        all.iter().find(|g| g.is_ipv4()).or(all.first()).copied()
    }

    pub fn name(&self) -> &str {
        &self.list.name
    }

    /// How many pods the native bridge's address ranges hold: each pod takes one address of
    /// every range set, so the smallest set decides (its gateway and, for a whole subnet, the
    /// network and broadcast addresses excluded, as host-local excludes them).
    pub fn address_capacity(&self) -> Option<u128> {
        let bridge = self.list.native_bridge()?;
        let count = |a: IpAddr, b: IpAddr| -> u128 {
            let n = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6),
            };
            n(b).saturating_sub(n(a)) + 1
        };
        bridge
            .ipam
            .ranges
            .iter()
            .map(|set| {
                set.iter()
                    .map(|r| {
                        let inside = r.gateway >= r.start && r.gateway <= r.end;
                        count(r.start, r.end).saturating_sub(u128::from(inside))
                    })
                    .sum::<u128>()
            })
            .min()
    }

    fn native(&self) -> Result<&Bridge, Error> {
        self.list.native_bridge().ok_or_else(|| Error::NotNative {
            network: self.list.name.clone(),
            plugins: self
                .list
                .plugins
                .iter()
                .map(|p| p.kind.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn store(&self, bridge: &Bridge) -> Result<DiskStore, Error> {
        Ok(DiskStore::open(&bridge.ipam.data_dir, &self.list.name)?)
    }

    /// Wires the pod whose network namespace is pinned at `netns`; `id` is its CNI container id.
    pub async fn attach(&self, pod: &PodRef<'_>, netns: &Path) -> Result<Attachment, Error> {
        match self.list.native_bridge() {
            Some(bridge) => self.attach_native(bridge, pod.uid, netns).await,
            None => self.attach_plugins(pod, netns).await,
        }
    }

    /// Verifies a re-adopted pod's attachment still stands (CNI CHECK, for plugin chains).
    pub async fn check(
        &self,
        id: &str,
        netns: &Path,
        attachment: &Attachment,
    ) -> Result<(), Error> {
        let Some(result) = &attachment.result else {
            return Ok(());
        };
        let inv = plugins::Invocation {
            container_id: id,
            netns,
            ifname: &attachment.ifname,
            args: attachment.args.clone(),
        };
        Ok(plugins::check(&self.bin_dirs, &self.list, &inv, result).await?)
    }

    /// Any other configuration: the plugin chain, executed as binaries.
    async fn attach_plugins(&self, pod: &PodRef<'_>, netns: &Path) -> Result<Attachment, Error> {
        let args = pod.args();
        let inv = plugins::Invocation {
            container_id: pod.uid,
            netns,
            ifname: IFNAME,
            args: args.clone(),
        };
        let result = plugins::add(&self.bin_dirs, &self.list, &inv).await?;
        if let Err(e) = plugins::write_cache(&self.cache_dir, &self.list, &inv, &result) {
            warn!(error = %e, "write CNI result cache");
        }
        Ok(Attachment {
            network: self.list.name.clone(),
            ifname: IFNAME.into(),
            host_veth: String::new(),
            ips: plugins::result_ips(&result, IFNAME),
            result: Some(result),
            args,
        })
    }

    async fn attach_native(
        &self,
        bridge: &Bridge,
        id: &str,
        netns: &Path,
    ) -> Result<Attachment, Error> {
        let store = self.store(bridge)?;
        let mut host_veth = None;
        let mut allocated = false;
        let result = self
            .wire(bridge, id, &store, netns, &mut host_veth, &mut allocated)
            .await;
        match result {
            Ok(attachment) => Ok(attachment),
            Err(e) => {
                // Fail fast, leak nothing: the veth (and with it the pod end), then the addresses.
                if let Some(name) = &host_veth {
                    if let Ok(host) = self.host() {
                        let _ = host.delete_link(name).await;
                    }
                }
                if allocated {
                    let _ = hostlocal::release(&store, id, IFNAME);
                }
                if bridge.ip_masq {
                    let _ = masq::remove(id).await;
                }
                Err(e)
            }
        }
    }

    async fn wire(
        &self,
        bridge: &Bridge,
        id: &str,
        store: &DiskStore,
        netns: &Path,
        host_veth: &mut Option<String>,
        allocated: &mut bool,
    ) -> Result<Attachment, Error> {
        let host = self.host()?;
        let host_ns = ns::current().map_err(|source| nodelet_netns::Error::Enter {
            path: "host".into(),
            source,
        })?;
        let (addresses_tx, addresses_rx) = tokio::sync::oneshot::channel();
        let (veth_tx, veth_rx) = tokio::sync::oneshot::channel::<String>();
        let (peer_tx, peer_rx) = tokio::sync::oneshot::channel::<Option<u32>>();
        let ipv6 = bridge
            .ipam
            .ranges
            .iter()
            .flatten()
            .any(|r| r.subnet.addr().is_ipv6());
        let pod_side = PodSide {
            routes: bridge.ipam.routes.clone(),
            mtu: bridge.mtu,
            ipv6,
        };
        // Three things at once: the pod side creates the veth, then configures the addresses
        // once allocated; the node side allocates them; and readies the bridge, then attaches
        // the veth's host end to it as soon as the pod side says it exists.
        let pod_ready = ns::within(netns, move |pod| async move {
            Ok(pod_side
                .wire(&pod, host_ns, veth_tx, peer_tx, addresses_rx)
                .await)
        });
        let node_ready = async {
            let allocations = hostlocal::allocate(store, &bridge.ipam, id, IFNAME)?;
            let _ = addresses_tx.send(allocations.clone());
            Ok::<_, Error>(allocations)
        };
        // A set of one range has one gateway, known before allocating: put it up front.
        let early_gateways: Vec<(IpAddr, u8)> = if bridge.is_gateway {
            bridge
                .ipam
                .ranges
                .iter()
                .filter(|set| set.len() == 1)
                .map(|set| (set[0].gateway, set[0].subnet.prefix_len()))
                .collect()
        } else {
            Vec::new()
        };
        let bridge_ready = async {
            let known = *self.bridge_ready.lock().expect("bridge lock");
            let index = match known {
                Some((index, at)) if at.elapsed() < BRIDGE_RECHECK => index,
                _ => {
                    let index = host.ensure_bridge(&bridge.bridge, bridge.mtu).await?;
                    sysctl::set(&format!("net/ipv6/conf/{}/accept_ra", bridge.bridge), "0")?;
                    for (gateway, prefix) in &early_gateways {
                        ensure_gateway(&host, bridge, index, *gateway, *prefix).await?;
                    }
                    *self.bridge_ready.lock().expect("bridge lock") =
                        Some((index, std::time::Instant::now()));
                    index
                }
            };
            // The host end by name as soon as it exists, while the pod side looks up eth0.
            let name = veth_rx.await.map_err(|_| Error::NoVethName)?;
            sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0")?;
            // A bridge port needs no address of its own; in an IPv4-only network, no IPv6.
            if !ipv6 {
                sysctl::set(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1")?;
            }
            if let Err(e) = host.attach_named(&name, index).await {
                *self.bridge_ready.lock().expect("bridge lock") = None;
                return Err(e.into());
            }
            if bridge.hairpin_mode {
                // The pod's eth0 names its peer's index (IFLA_LINK); without it, look it up.
                let port = match peer_rx.await.ok().flatten() {
                    Some(port) => port,
                    None => host.find_link(&name).await?.header.index,
                };
                host.set_hairpin(port).await?;
            }
            Ok::<u32, Error>(index)
        };
        // The pod side first: polling it hands its work to the namespace thread, which then
        // creates the veth while this task allocates (host-local's files take ~0.4 ms).
        let (pod_result, allocations, bridge_index) =
            tokio::join!(pod_ready, node_ready, bridge_ready);
        *allocated = allocations.is_ok();
        let (created, configured) = pod_result?;
        *host_veth = created;
        let allocations = allocations?;
        configured?;
        let bridge_index = bridge_index?;
        if allocations.is_empty() {
            return Err(Error::NoAddress);
        }
        let host_name = host_veth.clone().ok_or(Error::NoVethName)?;

        if bridge.is_gateway {
            for a in allocations
                .iter()
                .filter(|a| !early_gateways.contains(&(a.gateway, a.prefix_len)))
            {
                ensure_gateway(&host, bridge, bridge_index, a.gateway, a.prefix_len).await?;
            }
        }
        if bridge.ip_masq {
            for a in &allocations {
                let subnet = IpNet::new(a.ip, a.prefix_len)
                    .expect("prefix from a valid range")
                    .trunc();
                masq::add(id, a.ip, subnet).await?;
            }
        }
        Ok(Attachment {
            network: self.list.name.clone(),
            ifname: IFNAME.into(),
            host_veth: host_name,
            ips: allocations.iter().map(|a| (a.ip, a.prefix_len)).collect(),
            result: None,
            args: Vec::new(),
        })
    }

    /// Unwires a pod: the veth goes first (both ends with it), then its addresses are released
    /// (plugins#666: the other order can hand out an address still in use). Missing pieces are
    /// fine; every error is returned. On the native path the caller has let the pod's network
    /// namespace go (shim ended, pin released): the kernel then removes the veth with it, in a
    /// batch with other namespaces, where deleting it by hand waits for an RCU grace period
    /// under the RTNL lock (20 ms here, one pod after another: 20 s to delete 1,000 pods). A veth
    /// still there after `VETH_GONE` (something else holds the namespace) is deleted.
    pub async fn detach(
        &self,
        id: &str,
        netns: &Path,
        attachment: Option<&Attachment>,
    ) -> Vec<String> {
        if let Some(
            a @ Attachment {
                result: Some(result),
                ..
            },
        ) = attachment
        {
            let inv = plugins::Invocation {
                container_id: id,
                netns,
                ifname: &a.ifname,
                args: a.args.clone(),
            };
            let errors = plugins::del(&self.bin_dirs, &self.list, &inv, Some(result)).await;
            if errors.is_empty() {
                plugins::remove_cache(&self.cache_dir, &a.network, id, &a.ifname);
            }
            return errors;
        }
        let mut errors = Vec::new();
        if let Some(a) = attachment {
            let deleted = match self.host() {
                Ok(host) => gone_or_delete(&host, &a.host_veth).await,
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                errors.push(crate::error_chain(&e));
            }
        }
        match self.native().and_then(|b| self.store(b).map(|s| (b, s))) {
            Ok((bridge, store)) => {
                if let Err(e) = hostlocal::release(&store, id, IFNAME) {
                    errors.push(crate::error_chain(&e));
                }
                if bridge.ip_masq {
                    if let Err(e) = masq::remove(id).await {
                        errors.push(crate::error_chain(&e));
                    }
                }
            }
            Err(e) => errors.push(crate::error_chain(&e)),
        }
        errors
    }

    /// Frees addresses held by pods that no longer exist (CNI 1.1 GC semantics).
    pub fn gc(&self, live: &HashSet<String>) {
        let Ok(bridge) = self.native() else { return };
        match self
            .store(bridge)
            .and_then(|s| Ok(hostlocal::gc(&s, live)?))
        {
            Ok(freed) if !freed.is_empty() => {
                info!(?freed, "released addresses of pods that no longer exist")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %crate::error_chain(&e), "address garbage collection"),
        }
    }

    /// Keeps a route to every peer node's pod network through that node (host-gw).
    pub async fn route_peers(&self, peers: &[crate::config::Peer]) -> Result<(), String> {
        let host = self.host().map_err(|e| crate::error_chain(&e))?;
        for peer in peers {
            let cidr: IpNet = peer
                .pod_cidr
                .parse()
                .map_err(|_| format!("staticPeers: invalid podCIDR {:?}", peer.pod_cidr))?;
            let via: IpAddr = peer
                .node_ip
                .parse()
                .map_err(|_| format!("staticPeers: invalid nodeIP {:?}", peer.node_ip))?;
            host.add_route(
                cidr.network(),
                cidr.prefix_len(),
                Some(via),
                None,
                Origin::Peer,
            )
            .await
            .map_err(|e| crate::error_chain(&e))?;
            info!(pod_cidr = %cidr, via = %via, "route to peer node");
        }
        if !peers.is_empty() {
            sysctl::set("net/ipv4/ip_forward", "1").map_err(|e| crate::error_chain(&e))?;
        }
        Ok(())
    }
}

/// The gateway address on the bridge, and forwarding on for its family (bridge plugin `isGateway`).
async fn ensure_gateway(
    host: &Netlink,
    bridge: &Bridge,
    index: u32,
    gateway: IpAddr,
    prefix: u8,
) -> Result<(), Error> {
    host.ensure_gateway(&bridge.bridge, index, gateway, prefix, bridge.force_address)
        .await?;
    let forwarding = if gateway.is_ipv4() {
        "net/ipv4/ip_forward"
    } else {
        "net/ipv6/conf/all/forwarding"
    };
    Ok(sysctl::set(forwarding, "1")?)
}

/// What is done from inside the pod's namespace (on its own thread, see `ns::within`).
struct PodSide {
    routes: Vec<nodelet_cni_config::Route>,
    mtu: Option<u32>,
    /// The pod network has IPv6 ranges; without, the veth has no IPv6 at all (see `wire`).
    ipv6: bool,
}

impl PodSide {
    /// Creates the veth pair (the host end straight into `host_ns`), then, once the node side
    /// sends the addresses, addresses, link up, routes, as the bridge plugin does. Returns the
    /// host end's name if one was created, so that a failure after it can be rolled back.
    async fn wire(
        self,
        pod: &Netlink,
        host_ns: std::fs::File,
        veth: tokio::sync::oneshot::Sender<String>,
        peer: tokio::sync::oneshot::Sender<Option<u32>>,
        addresses: tokio::sync::oneshot::Receiver<Vec<Allocation>>,
    ) -> (Option<String>, Result<(), Error>) {
        let mut created = None;
        for _ in 0..10 {
            let name = format!("veth{}", crate::random_hex(4));
            match pod.create_veth(IFNAME, &name, &host_ns, self.mtu).await {
                Ok(Ok(())) => {
                    created = Some(name);
                    break;
                }
                Ok(Err(nodelet_netns::veth::Collision::HostName)) => continue,
                Ok(Err(nodelet_netns::veth::Collision::ContainerName)) => {
                    return (None, Err(Error::IfnameTaken(IFNAME.into())))
                }
                Err(e) => return (None, Err(e.into())),
            }
        }
        if created.is_none() {
            return (None, Err(Error::NoVethName));
        }
        // An IPv4-only network: no IPv6 on eth0 (as Docker does for such networks), set before
        // the host end is up and so before the link has carrier. Otherwise every new pod's
        // link-local address, DAD and MLD reports are flooded by the bridge to every other
        // pod's port: with a thousand pods, that is most of the node's CPU while they start.
        if !self.ipv6 {
            if let Err(e) = sysctl::set(&format!("net/ipv6/conf/{IFNAME}/disable_ipv6"), "1") {
                return (created, Err(e.into()));
            }
        }
        let _ = veth.send(created.clone().unwrap_or_default());
        let link = match pod.find_link(IFNAME).await {
            Ok(link) => link,
            Err(e) => return (created, Err(e.into())),
        };
        let _ = peer.send(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(index) => Some(*index),
            _ => None,
        }));
        // No addresses: the allocation failed, and the node side reports why.
        let Ok(allocations) = addresses.await else {
            return (created, Err(Error::NoAddress));
        };
        let result = self.configure(pod, link.header.index, &allocations).await;
        (created, result)
    }

    async fn configure(
        &self,
        pod: &Netlink,
        eth0: u32,
        allocations: &[Allocation],
    ) -> Result<(), Error> {
        sysctl::set(&format!("net/ipv4/conf/{IFNAME}/arp_notify"), "1")?;
        sysctl::set(&format!("net/ipv6/conf/{IFNAME}/accept_dad"), "0")?;
        for a in allocations {
            pod.add_address(eth0, a.ip, a.prefix_len).await?;
        }
        for route in &self.routes {
            let gateway = route.gw.or_else(|| {
                allocations
                    .iter()
                    .find(|a| a.gateway.is_ipv4() == route.dst.addr().is_ipv4())
                    .map(|a| a.gateway)
            });
            pod.add_route(
                route.dst.network(),
                route.dst.prefix_len(),
                gateway,
                Some(eth0),
                Origin::Pod,
            )
            .await?;
        }
        Ok(())
    }
}

/// The saved attachment of a pod, beside its shim.
/// The node's first global unicast address (IPv4 first): a hostNetwork pod's IP when the
/// node has no `nodeIP` set.
pub fn node_address() -> Option<IpAddr> {
    let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let addr = a.address?;
            addr.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
}

pub fn attachment_path(shim_dir: &Path) -> PathBuf {
    shim_dir.join("network.json")
}

pub fn read_attachment(shim_dir: &Path) -> Option<Attachment> {
    serde_json::from_slice(&std::fs::read(attachment_path(shim_dir)).ok()?).ok()
}

pub fn save_attachment(shim_dir: &Path, a: &Attachment) -> std::io::Result<()> {
    let path = attachment_path(shim_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(a)?)?;
    std::fs::rename(&tmp, &path)
}

/// How long a pod's veth may take to go with its network namespace.
const VETH_GONE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Waits for the link `name` to vanish, looking again at growing intervals; deletes it if it is
/// still there after `VETH_GONE`.
async fn gone_or_delete(host: &Netlink, name: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + VETH_GONE;
    let mut pause = std::time::Duration::from_millis(5);
    while host.try_find_link(name).await?.is_some() {
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(host.delete_link(name).await?);
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    Ok(())
}

#[cfg(test)]
mod capacity_tests {
    use super::*;

    #[test]
    fn a_subnet_holds_its_addresses_but_the_gateway() {
        let net = |cidr: &str| {
            let cidr: IpNet = cidr.parse().unwrap();
            let text = cni::default_conflist("nodelet", cidr, Path::new("/tmp/unused"));
            let list = cni::parse(Path::new("x.conflist"), text.as_bytes()).unwrap();
            Network::new(list, &Config::default()).unwrap()
        };
        assert_eq!(net("10.244.0.0/24").address_capacity(), Some(253));
        assert_eq!(net("10.244.0.0/22").address_capacity(), Some(1021));
    }
}
