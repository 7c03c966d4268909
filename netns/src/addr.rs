//! Addresses on links.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

use crate::{is_errno, Error, Netlink, Result};

impl Netlink {
    /// Adds `ip/prefix` to the link; already present is fine.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(source) => Err(Error::Netlink {
                action: "add address",
                object: format!("{ip}/{prefix}"),
                source,
            }),
        }
    }

    /// The global addresses of a link, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Netlink {
                action: "list addresses of",
                object: index.to_string(),
                source,
            })?;
        Ok(messages
            .iter()
            .filter(|m| m.header.scope == rtnetlink::packet_route::address::AddressScope::Universe)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Puts `gateway/prefix` on the bridge, as the bridge plugin's `ensureAddr`: a different
    /// address of the same family is an error unless `force` (which replaces it). The common
    /// case, the gateway already there, costs one request (EEXIST) instead of a dump.
    pub async fn ensure_gateway(
        &self,
        name: &str,
        index: u32,
        gateway: IpAddr,
        prefix: u8,
        force: bool,
    ) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, gateway, prefix)
            .execute()
            .await
        {
            Err(e) if is_errno(&e, libc::EEXIST) => return Ok(()),
            Err(source) => {
                return Err(Error::Netlink {
                    action: "add address",
                    object: format!("{gateway}/{prefix}"),
                    source,
                })
            }
            Ok(()) => {}
        }
        // Newly added: nothing else of its family may be on the bridge.
        for (ip, len) in self.addresses(index).await? {
            if ip.is_ipv4() != gateway.is_ipv4() || (ip, len) == (gateway, prefix) {
                continue;
            }
            if !force {
                self.delete_address(index, gateway).await?;
                return Err(Error::AddressConflict {
                    name: name.to_owned(),
                    address: format!("{gateway}/{prefix}"),
                });
            }
            self.delete_address(index, ip).await?;
        }
        Ok(())
    }

    async fn delete_address(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip)
            .execute();
        while let Some(m) = found.try_next().await.map_err(|source| Error::Netlink {
            action: "look up address",
            object: ip.to_string(),
            source,
        })? {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(|source| Error::Netlink {
                    action: "delete address",
                    object: ip.to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}
