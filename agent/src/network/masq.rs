//! `ipMasq: true`: masquerade what a pod sends outside its network, with nftables. One rule per
//! pod address in table `inet nodelet_masquerade`, commented with the pod's id so it can be found
//! and removed (the bridge plugin's nftables backend does the same in its own table). Only ever
//! used when the configuration asks for it: by default nodelet adds no NAT at all.

use std::net::IpAddr;
use std::process::Stdio;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;

pub const TABLE: &str = "nodelet_masquerade";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft: {0}")]
    Failed(String),
}

pub(super) async fn nft(args: &[&str], script: Option<&str>) -> Result<String, Error> {
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Masquerades traffic from `ip` that leaves `subnet` (multicast excepted, as the plugin does).
pub async fn add(id: &str, ip: IpAddr, subnet: IpNet) -> Result<(), Error> {
    let (family, multicast) = if ip.is_ipv4() {
        ("ip", "224.0.0.0/4")
    } else {
        ("ip6", "ff00::/8")
    };
    let script = format!(
        "table inet {TABLE} {{\n  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n}}\n\
         add rule inet {TABLE} postrouting {family} saddr {ip} {family} daddr != {subnet} {family} daddr != {multicast} masquerade comment \"{id}\"\n"
    );
    nft(&["-f", "-"], Some(&script)).await.map(drop)
}

/// Removes a whole table (`nodelet reset`); whether there was one.
pub async fn delete_table(table: &str) -> Result<bool, Error> {
    if nft(&["list", "table", "inet", table], None).await.is_err() {
        return Ok(false);
    }
    nft(&["delete", "table", "inet", table], None).await?;
    Ok(true)
}

/// Removes the pod's rules; a missing table or rule is fine.
pub async fn remove(id: &str) -> Result<(), Error> {
    remove_rules(TABLE, "postrouting", id).await
}

/// Removes the rules of `table`/`chain` commented with `marker`; a missing table is fine.
pub(super) async fn remove_rules(table: &str, chain: &str, marker: &str) -> Result<(), Error> {
    let listing = match nft(&["-a", "list", "chain", "inet", table, chain], None).await {
        Ok(listing) => listing,
        Err(Error::Failed(_)) => return Ok(()), // no table: nothing of ours
        Err(e) => return Err(e),
    };
    let marker = format!("comment \"{marker}\"");
    for line in listing.lines().filter(|l| l.contains(&marker)) {
        if let Some(handle) = line
            .rsplit("# handle ")
            .next()
            .filter(|h| h.trim().parse::<u64>().is_ok())
        {
            nft(
                &[
                    "delete",
                    "rule",
                    "inet",
                    table,
                    chain,
                    "handle",
                    handle.trim(),
                ],
                None,
            )
            .await?;
        }
    }
    Ok(())
}
