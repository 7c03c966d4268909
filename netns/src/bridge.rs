//! The node's bridge, and its ports.

use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};

use crate::{is_errno, Error, Netlink, Result};

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

impl Netlink {
    /// Creates the bridge if it is missing (STP off, kernel defaults otherwise, as the bridge
    /// plugin), brings it up, and returns its index. A non-bridge link of that name is an error.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<u32> {
        if self.try_find_link(name).await?.is_none() {
            let mut builder = LinkBridge::new(name);
            if let Some(mtu) = mtu {
                builder = builder.mtu(mtu);
            }
            match self.handle.link().add(builder.build()).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(source) => {
                    return Err(Error::Netlink {
                        action: "create bridge",
                        object: name.to_owned(),
                        source,
                    })
                }
            }
        }
        let bridge = self.find_link(name).await?;
        if !is_bridge(&bridge) {
            return Err(Error::WrongKind {
                name: name.to_owned(),
                kind: "bridge",
            });
        }
        if !bridge.header.flags.contains(LinkFlags::Up) {
            self.set_up(bridge.header.index).await?;
        }
        Ok(bridge.header.index)
    }

    /// Makes the link named `port` a port of `bridge` and brings it up, in one request that
    /// names the link (RTM_SETLINK by IFLA_IFNAME): no lookup of its index first.
    pub async fn attach_named(&self, port: &str, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_name(port)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                action: "attach to bridge",
                object: port.to_owned(),
                source,
            })
    }

    /// Turns hairpin mode on for a bridge port (a new port starts with it off).
    pub async fn set_hairpin(&self, port: u32) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(port).hairpin(true).build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                action: "set hairpin on",
                object: port.to_string(),
                source,
            })
    }
}
