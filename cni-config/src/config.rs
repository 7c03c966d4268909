//! Validated network configuration: what nodelet acts on, built from the wire format with errors
//! that name the file, the field and the value.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::wire::{WireBridge, WireHostLocal, WireList, WireRange, WireRoute};

/// CNI versions nodelet reads (the issue's 0.4.0 to 1.1.0).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// What nodelet writes and sends: every installed reference plugin (Debian's 1.1.1 too) takes it.
pub const WRITE_VERSION: &str = "1.0.0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("read CNI config {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("no CNI network configuration in {dir}")]
    NoConfig { dir: PathBuf },
    #[error("CNI config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Plugin>,
    pub disable_check: bool,
    /// The file it came from, and its bytes (what the libcni result cache records).
    pub source: PathBuf,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// The plugin's `type`: the binary to run when nodelet does not do it natively.
    pub kind: String,
    /// The plugin object as written (unknown keys included), for plugins executed as binaries.
    pub raw: Map<String, Value>,
    /// Set when this is `bridge` with `host-local` IPAM, which nodelet does itself.
    pub native: Option<Bridge>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub ipam: HostLocal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLocal {
    /// One address is allocated from each set.
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

pub type RangeSet = Vec<IpRange>;

#[derive(Debug, Clone, PartialEq)]
pub struct IpRange {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

impl NetworkList {
    /// The native bridge, when the whole list is one `bridge` + `host-local` plugin.
    pub fn native_bridge(&self) -> Option<&Bridge> {
        match self.plugins.as_slice() {
            [only] => only.native.as_ref(),
            _ => None,
        }
    }
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The configuration CNI tools would use from `dir`: the first `.conflist`, `.conf` or `.json`
/// in lexical order (as containerd's go-cni picks its default network).
pub fn load_dir(dir: &Path) -> Result<NetworkList, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Read {
            path: dir.to_owned(),
            message: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let first = files.first().ok_or_else(|| Error::NoConfig {
        dir: dir.to_owned(),
    })?;
    load_file(first)
}

pub fn load_file(path: &Path) -> Result<NetworkList, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse(path, &bytes)
}

/// Parses a `.conflist`, or a single-plugin `.conf` (upconverted to a list of one, as libcni does).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<NetworkList, Error> {
    let ctx = Ctx { path };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ctx.err("<document>", format!("invalid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ctx.err("<document>", "must be a JSON object"));
    };
    let single = path.extension().and_then(|e| e.to_str()) != Some("conflist")
        && !object.contains_key("plugins");
    if single {
        let name = object.get("name").cloned();
        let version = object.get("cniVersion").cloned();
        let plugin = std::mem::take(&mut object);
        object.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
        if let Some(n) = name {
            object.insert("name".into(), n);
        }
        if let Some(v) = version {
            object.insert("cniVersion".into(), v);
        }
    }
    let wire: WireList = serde_json::from_value(Value::Object(object))
        .map_err(|e| ctx.err("<document>", e.to_string()))?;
    validate(&ctx, wire, bytes)
}

fn validate(ctx: &Ctx<'_>, wire: WireList, bytes: &[u8]) -> Result<NetworkList, Error> {
    let version = wire
        .cni_version
        .clone()
        .ok_or_else(|| ctx.err("cniVersion", "required"))?;
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(ctx.err(
            "cniVersion",
            format!(
                "unsupported version {version:?}; nodelet reads {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let name = wire
        .name
        .clone()
        .ok_or_else(|| ctx.err("name", "required"))?;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(ctx.err(
            "name",
            format!("invalid value {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        ));
    }
    let raw_plugins = wire.plugins.clone().unwrap_or_default();
    if raw_plugins.is_empty() {
        return Err(ctx.err("plugins", "no plugin configs found"));
    }
    let mut plugins = Vec::new();
    for (i, raw) in raw_plugins.into_iter().enumerate() {
        let field = format!("plugins[{i}]");
        let kind = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => t.clone(),
            Some(other) => {
                return Err(ctx.err(format!("{field}.type"), format!("invalid value {other}")))
            }
            None => return Err(ctx.err(format!("{field}.type"), "required")),
        };
        let native = if kind == "bridge" {
            bridge(ctx, &field, &raw)?
        } else {
            None
        };
        plugins.push(Plugin { kind, raw, native });
    }
    let truthy = |v: &Option<Value>| match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    Ok(NetworkList {
        name,
        cni_version: version,
        plugins,
        disable_check: truthy(&wire.disable_check),
        source: ctx.path.to_owned(),
        bytes: bytes.to_vec(),
    })
}

/// A `bridge` plugin; native (`Some`) only with `host-local` IPAM and no VLAN.
fn bridge(ctx: &Ctx<'_>, field: &str, raw: &Map<String, Value>) -> Result<Option<Bridge>, Error> {
    let wire: WireBridge = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| ctx.err(field, format!("bridge: {e}")))?;
    if wire.hairpin_mode == Some(true) && wire.promisc_mode == Some(true) {
        return Err(ctx.err(
            field,
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    let Some(ipam) = &wire.ipam else {
        return Ok(None);
    };
    let ipam_type = ipam.get("type").and_then(Value::as_str).unwrap_or_default();
    if ipam_type != "host-local" || wire.vlan.is_some_and(|v| v > 0) {
        return Ok(None);
    }
    let bridge_name = wire.bridge.clone().unwrap_or_else(|| "cni0".into());
    if bridge_name.is_empty() || bridge_name.len() > 15 || bridge_name.contains(['/', ' ', ':']) {
        return Err(ctx.err(
            format!("{field}.bridge"),
            format!("invalid interface name {bridge_name:?}"),
        ));
    }
    let is_default_gateway = wire.is_default_gateway.unwrap_or(false);
    Ok(Some(Bridge {
        bridge: bridge_name,
        is_gateway: wire.is_gateway.unwrap_or(false) || is_default_gateway,
        is_default_gateway,
        force_address: wire.force_address.unwrap_or(false),
        ip_masq: wire.ip_masq.unwrap_or(false),
        mtu: wire.mtu.filter(|m| *m > 0),
        hairpin_mode: wire.hairpin_mode.unwrap_or(false),
        promisc_mode: wire.promisc_mode.unwrap_or(false),
        ipam: host_local(ctx, &format!("{field}.ipam"), ipam)?,
    }))
}

fn host_local(ctx: &Ctx<'_>, field: &str, raw: &Map<String, Value>) -> Result<HostLocal, Error> {
    let wire: WireHostLocal = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| ctx.err(field, e.to_string()))?;
    let mut sets: Vec<Vec<WireRange>> = Vec::new();
    if wire.subnet.is_some() {
        sets.push(vec![WireRange {
            subnet: wire.subnet.clone(),
            range_start: wire.range_start.clone(),
            range_end: wire.range_end.clone(),
            gateway: wire.gateway.clone(),
        }]);
    }
    sets.extend(wire.ranges.clone().unwrap_or_default());
    if sets.is_empty() {
        return Err(ctx.err(
            format!("{field}.ranges"),
            "required: no IP ranges specified",
        ));
    }
    let mut ranges = Vec::new();
    for (s, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(ctx.err(format!("{field}.ranges[{s}]"), "empty range set"));
        }
        let mut parsed = Vec::new();
        for (r, range) in set.iter().enumerate() {
            parsed.push(ip_range(ctx, &format!("{field}.ranges[{s}][{r}]"), range)?);
        }
        if parsed
            .iter()
            .any(|r| r.subnet.addr().is_ipv4() != parsed[0].subnet.addr().is_ipv4())
        {
            return Err(ctx.err(
                format!("{field}.ranges[{s}]"),
                "mixed address families in one range set",
            ));
        }
        ranges.push(parsed);
    }
    for (a, set_a) in ranges.iter().enumerate() {
        for (b, set_b) in ranges.iter().enumerate().skip(a + 1) {
            for ra in set_a {
                for rb in set_b {
                    if ra.subnet.contains(&rb.subnet.network())
                        || rb.subnet.contains(&ra.subnet.network())
                    {
                        return Err(ctx.err(
                            format!("{field}.ranges"),
                            format!(
                                "range set {a} ({}) overlaps with range set {b} ({})",
                                ra.subnet, rb.subnet
                            ),
                        ));
                    }
                }
            }
        }
    }
    let mut routes = Vec::new();
    for (i, route) in wire.routes.iter().flatten().enumerate() {
        routes.push(parse_route(ctx, &format!("{field}.routes[{i}]"), route)?);
    }
    Ok(HostLocal {
        ranges,
        routes,
        data_dir: PathBuf::from(
            wire.data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        ),
    })
}

fn ip_range(ctx: &Ctx<'_>, field: &str, wire: &WireRange) -> Result<IpRange, Error> {
    let text = wire
        .subnet
        .clone()
        .ok_or_else(|| ctx.err(format!("{field}.subnet"), "required"))?;
    let subnet: IpNet = text
        .parse()
        .map_err(|_| ctx.err(format!("{field}.subnet"), format!("invalid CIDR {text:?}")))?;
    if subnet.network() != subnet.addr() {
        return Err(ctx.err(
            format!("{field}.subnet"),
            format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                subnet.prefix_len(),
                subnet.network()
            ),
        ));
    }
    let too_small = match subnet {
        IpNet::V4(n) => n.prefix_len() >= 31,
        IpNet::V6(n) => n.prefix_len() >= 127,
    };
    if too_small {
        return Err(ctx.err(
            format!("{field}.subnet"),
            format!("Network {subnet} too small to allocate from"),
        ));
    }
    let addr = |key: &str, value: &Option<String>, default: IpAddr| -> Result<IpAddr, Error> {
        let Some(text) = value else {
            return Ok(default);
        };
        let ip: IpAddr = text
            .parse()
            .map_err(|_| ctx.err(format!("{field}.{key}"), format!("invalid IP {text:?}")))?;
        if !subnet.contains(&ip) {
            return Err(ctx.err(
                format!("{field}.{key}"),
                format!("{ip} is outside the subnet {subnet}"),
            ));
        }
        Ok(ip)
    };
    let first = add(subnet.network(), 1);
    let last = match subnet {
        IpNet::V4(_) => add(subnet.broadcast(), -1),
        IpNet::V6(_) => subnet.broadcast(),
    };
    let start = addr("rangeStart", &wire.range_start, first)?;
    let end = addr("rangeEnd", &wire.range_end, last)?;
    let gateway = addr("gateway", &wire.gateway, first)?;
    if start > end {
        return Err(ctx.err(
            format!("{field}.rangeStart"),
            format!("{start} is after rangeEnd {end}"),
        ));
    }
    Ok(IpRange {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_route(ctx: &Ctx<'_>, field: &str, wire: &WireRoute) -> Result<Route, Error> {
    let dst_text = wire
        .dst
        .clone()
        .ok_or_else(|| ctx.err(format!("{field}.dst"), "required"))?;
    let dst: IpNet = dst_text
        .parse()
        .map_err(|_| ctx.err(format!("{field}.dst"), format!("invalid CIDR {dst_text:?}")))?;
    let gw = match &wire.gw {
        Some(g) => Some(
            g.parse()
                .map_err(|_| ctx.err(format!("{field}.gw"), format!("invalid IP {g:?}")))?,
        ),
        None => None,
    };
    Ok(Route { dst, gw })
}

/// `ip` plus `delta` (host arithmetic over the whole address).
pub fn add(ip: IpAddr, delta: i128) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(((u32::from(v4) as i128 + delta) as u32).into()),
        IpAddr::V6(v6) => IpAddr::V6(((u128::from(v6) as i128 + delta) as u128).into()),
    }
}

/// The conflist nodelet writes when the directory has none: bridge `cni0` as gateway, no NAT,
/// hairpin on, host-local on the node's pod CIDR with a default route.
pub fn default_conflist(name: &str, pod_cidr: IpNet, data_dir: &Path) -> String {
    let conf = serde_json::json!({
        "cniVersion": WRITE_VERSION,
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr.trunc().to_string()}]],
                "routes": [{"dst": if pod_cidr.addr().is_ipv4() { "0.0.0.0/0" } else { "::/0" }}],
                "dataDir": data_dir.display().to_string(),
            }
        }]
    });
    serde_json::to_string_pretty(&conf).expect("json value serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<NetworkList, Error> {
        parse(
            Path::new("/etc/cni/net.d/10-test.conflist"),
            json.as_bytes(),
        )
    }

    fn reason(json: &str) -> String {
        load(json).unwrap_err().to_string()
    }

    #[test]
    fn default_config_is_native_and_round_trips() {
        let text = default_conflist(
            "nodelet",
            "10.244.0.0/24".parse().unwrap(),
            Path::new("/var/lib/cni/networks"),
        );
        let list = load(&text).unwrap();
        let bridge = list.native_bridge().unwrap();
        assert_eq!(
            (
                bridge.bridge.as_str(),
                bridge.is_gateway,
                bridge.ip_masq,
                bridge.hairpin_mode
            ),
            ("cni0", true, false, true)
        );
        let range = &bridge.ipam.ranges[0][0];
        assert_eq!(range.start.to_string(), "10.244.0.1");
        assert_eq!(range.end.to_string(), "10.244.0.254");
        assert_eq!(range.gateway.to_string(), "10.244.0.1");
        assert_eq!(bridge.ipam.routes[0].dst.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn single_plugin_conf_is_upconverted() {
        let list = parse(
            Path::new("/x/10-br.conf"),
            br#"{"cniVersion":"0.4.0","name":"n","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}"#,
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert!(list.native_bridge().is_some());
    }

    #[test]
    fn other_plugins_are_kept_raw_for_execution() {
        let list = load(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}},
            {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}"#,
        )
        .unwrap();
        assert!(
            list.native_bridge().is_none(),
            "a chain is executed as plugins"
        );
        assert_eq!(list.plugins[1].raw["snat"], Value::Bool(true));
    }

    #[test]
    fn bad_configs_name_file_field_and_value() {
        let e = reason(r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"bridge"}]}"#);
        assert!(e.starts_with("CNI config /etc/cni/net.d/10-test.conflist: cniVersion: unsupported version \"0.2.0\""), "{e}");
        let e = reason(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}}]}"#,
        );
        assert!(e.contains("plugins[0].ipam.ranges: range set 0 (10.1.0.0/16) overlaps with range set 1 (10.1.2.0/24)"), "{e}");
        let e = reason(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24","gateway":"10.2.0.1"}}]}"#,
        );
        assert!(
            e.contains(
                "plugins[0].ipam.ranges[0][0].gateway: 10.2.0.1 is outside the subnet 10.1.0.0/24"
            ),
            "{e}"
        );
        let e = reason(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.5/24"}}]}"#,
        );
        assert!(e.contains("Network has host bits set. For a subnet mask of length 24 the network address is 10.1.0.0"), "{e}");
        assert!(reason("{not json").contains("<document>: invalid JSON"));
        assert!(
            reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#)
                .contains("plugins[0].type: required")
        );
        assert!(
            reason(r#"{"cniVersion":"1.0.0","name":"bad name","plugins":[{"type":"x"}]}"#)
                .contains("name: invalid value")
        );
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","hairpinMode":true,"promiscMode":true,"ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}]}"#).contains("hairpin"));
    }

    #[test]
    fn first_file_in_lexical_order_wins() {
        let dir = std::env::temp_dir().join(format!("cni-config-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("10-a.conf"),
            r#"{"cniVersion":"1.0.0","name":"a","type":"y"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("00-ignored.txt"), "x").unwrap();
        assert_eq!(load_dir(&dir).unwrap().name, "a");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(load_dir(&dir), Err(Error::Read { .. })));
    }
}
