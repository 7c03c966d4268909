//! The JSON of CNI configuration files as written (SPEC.md §1): every key optional, unknown keys
//! kept, so that validation can say exactly what is missing or wrong and plugins executed as
//! binaries get their configuration unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A `.conflist`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireList {
    pub cni_version: Option<String>,
    pub cni_versions: Option<Vec<String>>,
    pub name: Option<String>,
    pub plugins: Option<Vec<Map<String, Value>>>,
    pub disable_check: Option<Value>,
    #[serde(rename = "disableGC")]
    pub disable_gc: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The `bridge` plugin's keys (plugins/main/bridge).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireBridge {
    pub bridge: Option<String>,
    pub is_gateway: Option<bool>,
    pub is_default_gateway: Option<bool>,
    pub force_address: Option<bool>,
    pub ip_masq: Option<bool>,
    pub mtu: Option<u32>,
    pub hairpin_mode: Option<bool>,
    pub promisc_mode: Option<bool>,
    pub vlan: Option<u16>,
    pub ipam: Option<Map<String, Value>>,
}

/// host-local's `ipam` keys (plugins/ipam/host-local).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireHostLocal {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
    pub ranges: Option<Vec<Vec<WireRange>>>,
    pub routes: Option<Vec<WireRoute>>,
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireRange {
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct WireRoute {
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}
