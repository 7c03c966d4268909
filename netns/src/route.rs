//! Routes: the pod's routes through the bridge's gateway, and the node's routes to other nodes'
//! pod networks (host-gw style).

use std::net::IpAddr;

use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::RouteMessageBuilder;

use crate::{is_errno, Error, Netlink, Result};

/// What a route is for: the pod's own (protocol boot, as the plugin's), or the node's to a peer
/// (protocol static, replaced when it changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Peer,
}

impl Netlink {
    pub async fn add_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        origin: Origin,
    ) -> Result<()> {
        let object = format!("{dst}/{prefix}");
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .map_err(|e| Error::InvalidRoute {
                route: object.clone(),
                reason: format!("{e:?}"),
            })?;
        if let Some(gw) = gateway {
            builder = builder.gateway(gw).map_err(|e| Error::InvalidRoute {
                route: object.clone(),
                reason: format!("{e:?}"),
            })?;
        }
        if let Some(index) = oif {
            builder = builder.output_interface(index);
        }
        builder = builder.protocol(match origin {
            Origin::Pod => RouteProtocol::Boot,
            Origin::Peer => RouteProtocol::Static,
        });
        let request = self.handle.route().add(builder.build());
        let request = if origin == Origin::Peer {
            request.replace()
        } else {
            request
        };
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(source) => Err(Error::Netlink {
                action: "add route",
                object,
                source,
            }),
        }
    }
}
