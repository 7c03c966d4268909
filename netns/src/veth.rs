//! The veth pair of a pod: created from inside the pod's namespace with the container end already
//! named (`eth0`) and the host end placed straight into the host namespace, in one RTM_NEWLINK,
//! as the bridge plugin's `SetupVeth` does: nothing is renamed or moved afterwards.

use std::fs::File;
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::{is_errno, Error, Netlink, Result};

/// Which end already existed when a pair could not be created.
#[derive(Debug)]
pub enum Collision {
    HostName,
    ContainerName,
}

impl Netlink {
    /// Creates `ifname` here (this handle's namespace) and its peer `host_name` in `host_ns`.
    /// On EEXIST it reports which name collided, so the caller can pick another host name.
    pub async fn create_veth(
        &self,
        ifname: &str,
        host_name: &str,
        host_ns: &File,
        mtu: Option<u32>,
    ) -> Result<std::result::Result<(), Collision>> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(host_name.to_owned())
            .setns_by_fd(host_ns.as_raw_fd());
        // Up from the start: one request fewer than bringing it up after (the host end comes up
        // when it joins the bridge).
        let mut builder = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(ifname.to_owned())
            .up();
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
            builder = builder.mtu(mtu);
        }
        let message = builder
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => Ok(Ok(())),
            // EEXIST: either name may be taken; the container's is the one that can't be retried.
            Err(e) if is_errno(&e, libc::EEXIST) => match self.try_find_link(ifname).await? {
                Some(_) => Ok(Err(Collision::ContainerName)),
                None => Ok(Err(Collision::HostName)),
            },
            Err(source) => Err(Error::Netlink {
                action: "create veth",
                object: format!("{ifname}/{host_name}"),
                source,
            }),
        }
    }
}
