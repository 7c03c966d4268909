//! Links by name: lookups, up, delete.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::LinkUnspec;

use crate::{is_errno, Error, Netlink, Result};

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub async fn try_find_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(source) => Err(Error::Netlink {
                action: "look up link",
                object: name.to_owned(),
                source,
            }),
        }
    }

    /// The link called `name`; an error when it does not exist.
    pub async fn find_link(&self, name: &str) -> Result<LinkMessage> {
        self.try_find_link(name)
            .await?
            .ok_or_else(|| Error::NoLink(name.to_owned()))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                action: "set up link",
                object: index.to_string(),
                source,
            })
    }

    /// Deletes the link called `name`; absent links are fine (teardown is idempotent).
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.try_find_link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(source) => Err(Error::Netlink {
                action: "delete link",
                object: name.to_owned(),
                source,
            }),
        }
    }
}
