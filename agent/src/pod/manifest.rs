//! Reading a Pod manifest (YAML or JSON) and validating what nodelet will run, with errors that name
//! the field the way the Kubernetes API does: `spec.containers[0].image: Required value`.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::quantity;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses one Pod. YAML is a superset of JSON, so one parser reads both.
pub fn parse(text: &[u8]) -> Result<Pod, FieldError> {
    let de = serde_yaml::Deserializer::from_slice(text);
    let pod: Pod = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "<document>".to_owned()
        } else {
            path
        };
        field_err(field, e.into_inner().to_string())
    })?;
    Ok(pod)
}

const RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];

/// Checks what the API server would check for the fields nodelet uses, and refuses what nodelet
/// cannot run yet rather than running it wrongly.
pub fn validate(pod: &Pod) -> Result<(), FieldError> {
    // `apiVersion` and `kind` are checked by k8s-openapi while deserialising.
    let meta = &pod.metadata;
    match meta.name.as_deref() {
        None | Some("") => {
            return Err(field_err(
                "metadata.name",
                "Required value: name or generateName is required",
            ))
        }
        Some(name) => check_subdomain("metadata.name", name)?,
    }
    if let Some(ns) = meta.namespace.as_deref() {
        check_label("metadata.namespace", ns)?;
    }
    validate_meta(meta)?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| field_err("spec", "Required value"))?;
    validate_spec(spec)
}

fn validate_spec(spec: &PodSpec) -> Result<(), FieldError> {
    if spec.containers.is_empty() {
        return Err(field_err("spec.containers", "Required value"));
    }
    if let Some(policy) = spec.restart_policy.as_deref() {
        if !RESTART_POLICIES.contains(&policy) {
            return Err(field_err(
                "spec.restartPolicy",
                format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
    if let Some(grace) = spec.termination_grace_period_seconds {
        if grace < 0 {
            return Err(field_err(
                "spec.terminationGracePeriodSeconds",
                format!("Invalid value: {grace}: must be >= 0"),
            ));
        }
    }
    if spec.host_pid == Some(true) && spec.share_process_namespace == Some(true) {
        return Err(field_err(
            "spec.shareProcessNamespace",
            "Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled",
        ));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{i}].ports[{j}].hostPort");
            match p.host_port {
                None | Some(0) => {}
                Some(h) if !(1..=65535).contains(&h) => {
                    return Err(field_err(
                        field,
                        format!("Invalid value: {h}: must be between 1 and 65535, inclusive"),
                    ));
                }
                Some(_) if spec.host_network != Some(true) => {}
                // kube-apiserver: a host-network pod's ports are the node's.
                Some(h) if h != p.container_port => {
                    return Err(field_err(field, format!("Invalid value: {h}: must match `containerPort` when `hostNetwork` is true")));
                }
                Some(_) => {}
            }
        }
    }
    if let Some(sysctls) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref())
    {
        let mut seen = HashSet::new();
        for (i, s) in sysctls.iter().enumerate() {
            let field = format!("spec.securityContext.sysctls[{i}].name");
            let name = super::admission::normalize(&s.name);
            let part_ok = |p: &str| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
                    && p.as_bytes()[0].is_ascii_alphanumeric()
                    && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric()
            };
            if s.name.len() > 253 || !s.name.split(['.', '/']).all(part_ok) {
                return Err(field_err(field, format!("Invalid value: {:?}: must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$", s.name)));
            }
            if !seen.insert(name) {
                return Err(field_err(field, format!("Duplicate value: {:?}", s.name)));
            }
        }
    }
    // kube-apiserver's validateHostUsers.
    if spec.host_users == Some(false) {
        for (field, set) in [
            ("hostNetwork", spec.host_network),
            ("hostPID", spec.host_pid),
            ("hostIPC", spec.host_ipc),
        ] {
            if set == Some(true) {
                return Err(field_err(
                    format!("spec.{field}"),
                    "Forbidden: when `hostUsers` is false",
                ));
            }
        }
    }
    if let Some(profile) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        check_seccomp("spec.securityContext.seccompProfile", profile)?;
    }
    let volumes = validate_volumes(spec)?;
    let own_users = spec.host_users == Some(false);
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let mut names = HashSet::new();
    let init = spec.init_containers.iter().flatten();
    let all = init.map(|c| ("initContainers", c)).enumerate().chain(
        spec.containers
            .iter()
            .map(|c| ("containers", c))
            .enumerate(),
    );
    for (i, (list, c)) in all {
        let path = format!("spec.{list}[{i}]");
        check_label(&format!("{path}.name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(field_err(
                format!("{path}.name"),
                format!("Duplicate value: {:?}", c.name),
            ));
        }
        validate_container(&path, c, &volumes, own_users)?;
        super::lifecycle::validate(&path, c, list == "initContainers", grace)?;
    }
    for (i, e) in spec.ephemeral_containers.iter().flatten().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        check_label(&format!("{path}.name"), &e.name)?;
        if !names.insert(e.name.as_str()) {
            return Err(field_err(
                format!("{path}.name"),
                format!("Duplicate value: {:?}", e.name),
            ));
        }
        // kube-apiserver's validateEphemeralContainers: what only a regular container may have.
        let forbidden = [
            ("ports", e.ports.as_ref().is_some_and(|p| !p.is_empty())),
            ("livenessProbe", e.liveness_probe.is_some()),
            ("readinessProbe", e.readiness_probe.is_some()),
            ("startupProbe", e.startup_probe.is_some()),
            ("lifecycle", e.lifecycle.is_some()),
            (
                "resources",
                e.resources
                    .as_ref()
                    .is_some_and(|r| r.limits.is_some() || r.requests.is_some()),
            ),
            (
                "resizePolicy",
                e.resize_policy.as_ref().is_some_and(|r| !r.is_empty()),
            ),
            ("restartPolicy", e.restart_policy.is_some()),
        ];
        if let Some((field, _)) = forbidden.iter().find(|(_, set)| *set) {
            return Err(field_err(
                format!("{path}.{field}"),
                "Forbidden: cannot be set for an Ephemeral Container",
            ));
        }
        for (j, m) in e.volume_mounts.iter().flatten().enumerate() {
            if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(field_err(
                    format!("{path}.volumeMounts[{j}].subPath"),
                    "Forbidden: cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(t) = e.target_container_name.as_deref().filter(|t| !t.is_empty()) {
            let known = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| c.name == t);
            if !known {
                return Err(field_err(
                    format!("{path}.targetContainerName"),
                    format!("Not found: {t:?}"),
                ));
            }
        }
        let c = super::build::ephemeral_container(e);
        validate_container(&path, &c, &volumes, own_users)?;
    }
    Ok(())
}

fn validate_volumes(spec: &PodSpec) -> Result<HashSet<&str>, FieldError> {
    let mut names = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("spec.volumes[{i}]");
        check_label(&format!("{path}.name"), &v.name)?;
        if !names.insert(v.name.as_str()) {
            return Err(field_err(
                format!("{path}.name"),
                format!("Duplicate value: {:?}", v.name),
            ));
        }
        let types = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
        ];
        if types.iter().filter(|t| **t).count() > 1 {
            return Err(field_err(
                path,
                "Forbidden: may not specify more than 1 volume type",
            ));
        }
        if super::projected::is_api_volume(v) {
            super::projected::validate(&path, v)?;
            continue;
        }
        match (&v.empty_dir, &v.host_path) {
            (Some(e), None) => {
                if let Some(m) = e.medium.as_deref().filter(|m| !m.is_empty()) {
                    if m != "Memory" {
                        return Err(field_err(format!("{path}.emptyDir.medium"), format!("Unsupported value: {m:?}: supported values: \"\", \"Memory\"")));
                    }
                }
                if let Some(q) = &e.size_limit {
                    if quantity::parse_bytes(&q.0).is_none() {
                        return Err(field_err(format!("{path}.emptyDir.sizeLimit"), format!("Invalid value: {:?}: must be a quantity", q.0)));
                    }
                    if e.medium.as_deref() != Some("Memory") {
                        // kubelet enforces a disk emptyDir's sizeLimit by eviction, which
                        // nodelet does not do: refused rather than ignored.
                        return Err(field_err(format!("{path}.emptyDir.sizeLimit"), "Forbidden: sizeLimit is enforced by nodelet only for medium: Memory (a tmpfs of that size); disk emptyDir limits need eviction, which nodelet does not do yet"));
                    }
                }
            }
            (_, Some(hp)) => {
                if !hp.path.starts_with('/') {
                    return Err(field_err(format!("{path}.hostPath.path"), format!("Invalid value: {:?}: must be an absolute path", hp.path)));
                }
                if let Some(t) = hp.type_.as_deref() {
                    const TYPES: [&str; 7] = ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice"];
                    if !TYPES.contains(&t) && t != "BlockDevice" {
                        return Err(field_err(format!("{path}.hostPath.type"), format!("Unsupported value: {t:?}")));
                    }
                }
            }
            (None, None) if v.persistent_volume_claim.is_some() => {
                return Err(field_err(format!("{path}.persistentVolumeClaim"), "Forbidden: this node has no storage provisioner: persistentVolumeClaim volumes cannot be bound (use a hostPath or an emptyDir volume)"))
            }
            (None, None) => {
                return Err(field_err(path, "Unsupported value: nodelet supports emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes"))
            }
        }
    }
    Ok(names)
}

/// `own_users`: the pod has a user namespace of its own (`hostUsers: false`).
fn validate_container(
    path: &str,
    c: &Container,
    volumes: &HashSet<&str>,
    own_users: bool,
) -> Result<(), FieldError> {
    if c.image.as_deref().is_none_or(str::is_empty) {
        return Err(field_err(format!("{path}.image"), "Required value"));
    }
    if let Some(image) = c.image.as_deref() {
        crate::images::Reference::parse(image).map_err(|e| {
            field_err(
                format!("{path}.image"),
                format!("Invalid value: {image:?}: {}", e.reason),
            )
        })?;
    }
    if let Some(policy) = c.image_pull_policy.as_deref() {
        if !["Always", "IfNotPresent", "Never"].contains(&policy) {
            return Err(field_err(
                format!("{path}.imagePullPolicy"),
                format!("Unsupported value: {policy:?}"),
            ));
        }
    }
    refuse_unapplied(path, c)?;
    let mut mount_paths = HashSet::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mpath = format!("{path}.volumeMounts[{j}]");
        if !volumes.contains(m.name.as_str()) {
            return Err(field_err(
                format!("{mpath}.name"),
                format!("Not found: {:?}", m.name),
            ));
        }
        if !m.mount_path.starts_with('/') {
            return Err(field_err(
                format!("{mpath}.mountPath"),
                format!(
                    "Invalid value: {:?}: must be an absolute path",
                    m.mount_path
                ),
            ));
        }
        if !mount_paths.insert(m.mount_path.trim_end_matches('/')) {
            return Err(field_err(
                format!("{mpath}.mountPath"),
                format!("Invalid value: {:?}: must be unique", m.mount_path),
            ));
        }
        if is_proc_mount(&m.mount_path) {
            return Err(field_err(
                format!("{mpath}.mountPath"),
                format!(
                    "Invalid value: {:?}: mounts over or under /proc are not allowed (runc refuses them)",
                    m.mount_path
                ),
            ));
        }
        let sub_path = m.sub_path.as_deref().filter(|s| !s.is_empty());
        let sub_path_expr = m.sub_path_expr.as_deref().filter(|s| !s.is_empty());
        if sub_path.is_some() && sub_path_expr.is_some() {
            return Err(field_err(
                format!("{mpath}.subPathExpr"),
                "Invalid value: subPathExpr and subPath are mutually exclusive",
            ));
        }
        for (field, value) in [("subPath", sub_path), ("subPathExpr", sub_path_expr)] {
            if let Some(p) = value {
                check_descending(&format!("{mpath}.{field}"), p)?;
            }
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() || e.name.contains('=') {
            return Err(field_err(
                format!("{path}.env[{j}].name"),
                format!(
                    "Invalid value: {:?}: a valid environment variable name is required",
                    e.name
                ),
            ));
        }
    }
    if let Some(res) = &c.resources {
        for (kind, list) in [("limits", &res.limits), ("requests", &res.requests)] {
            for (name, q) in list.iter().flatten() {
                let ok = match name.as_str() {
                    "memory" | "ephemeral-storage" => quantity::parse_bytes(&q.0).is_some(),
                    "cpu" => quantity::parse_millicpu(&q.0).is_some(),
                    _ => true,
                };
                if !ok {
                    return Err(field_err(
                        format!("{path}.resources.{kind}[{name}]"),
                        format!("Invalid value: {:?}: must be a quantity", q.0),
                    ));
                }
            }
        }
    }
    if let Some(sc) = &c.security_context {
        if let Some(mount) = sc.proc_mount.as_deref() {
            match mount {
                "Default" => {}
                "Unmasked" if own_users => {}
                "Unmasked" => {
                    return Err(field_err(
                        format!("{path}.securityContext.procMount"),
                        "Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`",
                    ))
                }
                other => {
                    return Err(field_err(
                        format!("{path}.securityContext.procMount"),
                        format!(
                        "Unsupported value: {other:?}: supported values: \"Default\", \"Unmasked\""
                    ),
                    ))
                }
            }
        }
        if let Some(caps) = &sc.capabilities {
            let names: Vec<String> = caps
                .add
                .iter()
                .chain(caps.drop.iter())
                .flatten()
                .filter(|n| *n != "ALL")
                .cloned()
                .collect();
            nodelet_sandbox::caps::parse(&names).map_err(|e| {
                field_err(
                    format!("{path}.securityContext.capabilities"),
                    format!("Invalid value: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// Fields nodelet does not apply yet are refused, never accepted and ignored: a pod that
/// asked for a seccomp profile must not run as if it had one.
fn refuse_unapplied(path: &str, c: &Container) -> Result<(), FieldError> {
    for (j, src) in c.env_from.iter().flatten().enumerate() {
        let field = format!("{path}.envFrom[{j}]");
        match (&src.config_map_ref, &src.secret_ref) {
            (Some(_), Some(_)) => {
                return Err(field_err(
                    field,
                    "Invalid value: \"\": may not have more than one field specified at a time",
                ))
            }
            (None, None) => {
                return Err(field_err(
                    field,
                    "Invalid value: \"\": must specify one of: `configMapRef` or `secretRef`",
                ))
            }
            _ => {}
        }
        let name = src
            .config_map_ref
            .as_ref()
            .map(|r| ("configMapRef", &r.name))
            .or(src.secret_ref.as_ref().map(|r| ("secretRef", &r.name)));
        if let Some((kind, name)) = name {
            if name.is_empty() {
                return Err(field_err(format!("{field}.{kind}.name"), "Required value"));
            }
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let from = e.value_from.as_ref();
        if let Some(f) = from {
            let sources = [
                f.field_ref.is_some(),
                f.resource_field_ref.is_some(),
                f.config_map_key_ref.is_some(),
                f.secret_key_ref.is_some(),
            ];
            let field = format!("{path}.env[{j}].valueFrom");
            match sources.iter().filter(|s| **s).count() {
                0 => return Err(field_err(field, "Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`")),
                1 => {}
                _ => return Err(field_err(field, "Invalid value: \"\": may not have more than one field specified at a time")),
            }
            for (kind, name, key) in [
                f.config_map_key_ref
                    .as_ref()
                    .map(|r| ("configMapKeyRef", &r.name, &r.key)),
                f.secret_key_ref
                    .as_ref()
                    .map(|r| ("secretKeyRef", &r.name, &r.key)),
            ]
            .into_iter()
            .flatten()
            {
                if name.is_empty() {
                    return Err(field_err(format!("{field}.{kind}.name"), "Required value"));
                }
                if key.is_empty() {
                    return Err(field_err(format!("{field}.{kind}.key"), "Required value"));
                }
            }
        }
        if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            let field = format!("{path}.env[{j}].valueFrom.fieldRef.fieldPath");
            check_field_ref(&field, &f.field_path, &ENV_FIELDS)?;
        }
        if let Some(r) = from.and_then(|f| f.resource_field_ref.as_ref()) {
            check_resource_ref(&format!("{path}.env[{j}].valueFrom.resourceFieldRef"), r)?;
        }
    }
    if let Some(profile) = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        check_seccomp(&format!("{path}.securityContext.seccompProfile"), profile)?;
    }
    Ok(())
}

/// A downward API `fieldPath`: one of `allowed`, or `metadata.labels['k']` /
/// `metadata.annotations['k']` (kube-apiserver's `validateDownwardAPIFieldPath...`).
pub fn check_field_ref(field: &str, path: &str, allowed: &[&str]) -> Result<(), FieldError> {
    let keyed = ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|pre| path.starts_with(pre) && path.ends_with("']"));
    if allowed.contains(&path) || keyed {
        return Ok(());
    }
    let supported: Vec<String> = allowed.iter().map(|f| format!("{f:?}")).collect();
    Err(field_err(
        field,
        format!(
            "Unsupported value: {path:?}: supported values: {}",
            supported.join(", ")
        ),
    ))
}

/// kube-apiserver's `validateLocalDescendingPath`: relative, without a `..` component.
pub fn check_descending(field: &str, path: &str) -> Result<(), FieldError> {
    if path.starts_with('/') {
        return Err(field_err(
            field,
            format!("Invalid value: {path:?}: must be a relative path"),
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(field_err(
            field,
            format!("Invalid value: {path:?}: must not contain '..'"),
        ));
    }
    Ok(())
}

/// The fields an environment variable may take (`validEnvDownwardAPIFieldPathExpressions`,
/// and `metadata.labels['k']`/`metadata.annotations['k']`).
const ENV_FIELDS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// kube-apiserver's `validateContainerResourceFieldSelector` for environment variables.
fn check_resource_ref(
    field: &str,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<(), FieldError> {
    const RESOURCES: [&str; 6] = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    if !RESOURCES.contains(&r.resource.as_str()) {
        let supported: Vec<String> = RESOURCES.iter().map(|r| format!("{r:?}")).collect();
        return Err(field_err(
            format!("{field}.resource"),
            format!(
                "Unsupported value: {:?}: supported values: {}",
                r.resource,
                supported.join(", ")
            ),
        ));
    }
    if let Some(d) = &r.divisor {
        let cpu = r.resource.ends_with(".cpu");
        let ok: &[&str] = if cpu {
            &["1m", "1"]
        } else {
            &[
                "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
            ]
        };
        if !ok.contains(&d.0.as_str()) {
            let what = if cpu { "cpu" } else { "memory or storage" };
            return Err(field_err(
                format!("{field}.divisor"),
                format!("Invalid value: {:?}: only divisor's values {} are supported with the {what} resource", d.0, ok.join(", ")),
            ));
        }
    }
    Ok(())
}

/// kube-apiserver's `validateSeccompProfileField`.
fn check_seccomp(
    field: &str,
    profile: &k8s_openapi::api::core::v1::SeccompProfile,
) -> Result<(), FieldError> {
    let localhost = profile.localhost_profile.as_deref();
    match profile.type_.as_str() {
        "RuntimeDefault" | "Unconfined" => {
            if localhost.is_some() {
                return Err(field_err(
                    format!("{field}.localhostProfile"),
                    "Invalid value: \"\": can only be set if type is Localhost",
                ));
            }
        }
        "Localhost" => {
            let Some(path) = localhost.filter(|p| !p.is_empty()) else {
                return Err(field_err(
                    format!("{field}.localhostProfile"),
                    "Required value: must be set when seccomp type is Localhost",
                ));
            };
            if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(field_err(format!("{field}.localhostProfile"), format!("Invalid value: {path:?}: must be a relative path without '..' (inside <rootDir>/seccomp)")));
            }
        }
        other => {
            return Err(field_err(format!("{field}.type"), format!("Unsupported value: {other:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"")));
        }
    }
    Ok(())
}

/// runc's `checkProcMount`: nothing is mounted on /proc or below it, except over the few files
/// that lxcfs-style tools replace.
fn is_proc_mount(path: &str) -> bool {
    const ALLOWED: [&str; 10] = [
        "/proc/cpuinfo",
        "/proc/diskstats",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/swaps",
        "/proc/uptime",
        "/proc/loadavg",
        "/proc/slabinfo",
        "/proc/net/dev",
        "/proc/sys/kernel/ns_last_pid",
    ];
    let clean: std::path::PathBuf = std::path::Path::new(path).components().collect();
    clean.starts_with("/proc") && !ALLOWED.iter().any(|a| clean == std::path::Path::new(a))
}

/// What a pod refers to in the API (a service account, Secrets, ConfigMaps), which a static pod
/// may not: its node may run it with no API server (kubelet and kube-apiserver's ServiceAccount
/// admission refuse them, for mirror pods).
pub fn api_references(pod: &Pod) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    if spec
        .service_account_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        || spec
            .service_account
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return Some("service accounts");
    }
    let volumes = spec.volumes.iter().flatten();
    let projected = || {
        volumes
            .clone()
            .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
    };
    let containers = super::status::containers(pod).map(|(c, _)| c);
    let (mut maps, mut secrets) = (false, false);
    for c in containers {
        let (m, s) = super::build::env_sources(c);
        maps |= !m.is_empty();
        secrets |= !s.is_empty();
    }
    if volumes.clone().any(|v| v.secret.is_some())
        || projected().any(|s| s.secret.is_some())
        || spec
            .image_pull_secrets
            .as_ref()
            .is_some_and(|s| !s.is_empty())
        || secrets
    {
        return Some("secrets");
    }
    if projected().any(|s| s.service_account_token.is_some()) {
        return Some("serviceaccounttoken volume projections");
    }
    if volumes.clone().any(|v| v.config_map.is_some())
        || projected().any(|s| s.config_map.is_some())
        || maps
    {
        return Some("configmaps");
    }
    None
}

/// kube-apiserver's total limit on an object's annotations (`TotalAnnotationSizeLimitB`).
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// apimachinery's `ValidateObjectMeta` for labels and annotations: qualified-name keys, label
/// values of at most 63 characters, annotations of at most 256 KiB in all.
pub fn validate_meta(meta: &ObjectMeta) -> Result<(), FieldError> {
    for (key, value) in meta.labels.iter().flatten() {
        check_qualified_name("metadata.labels", key)?;
        check_label_value("metadata.labels", value)?;
    }
    let mut size = 0;
    for (key, value) in meta.annotations.iter().flatten() {
        check_qualified_name("metadata.annotations", &key.to_ascii_lowercase())?;
        size += key.len() + value.len();
    }
    if size > ANNOTATIONS_MAX {
        return Err(field_err(
            "metadata.annotations",
            format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters (a label value may also be
/// empty).
fn is_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
}

const NAME_PART: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name part.
fn check_qualified_name(field: &str, key: &str) -> Result<(), FieldError> {
    let invalid = |why: &str| field_err(field, format!("Invalid value: {:?}: {why}", shown(key)));
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || check_subdomain(field, prefix).is_err() {
            return Err(invalid("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
        }
    }
    if name.len() > 63 {
        return Err(invalid("name part must be no more than 63 characters"));
    }
    if !is_name_part(name) {
        return Err(invalid(NAME_PART));
    }
    Ok(())
}

/// A value as an error message quotes it: long ones cut (a 1 MB label is not echoed back).
fn shown(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

/// apimachinery's `IsValidLabelValue`.
fn check_label_value(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > 63 {
        return Err(field_err(
            field,
            format!(
                "Invalid value: {:?}: must be no more than 63 characters",
                shown(value)
            ),
        ));
    }
    if !value.is_empty() && !is_name_part(value) {
        return Err(field_err(field, format!("Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")));
    }
    Ok(())
}

/// RFC 1123 label: at most 63 lower-case alphanumerics or '-', starting and ending alphanumeric.
pub fn check_label(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(field_err(field, format!("Invalid value: {value:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")))
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_subdomain(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = value.len() <= 253 && value.split('.').all(|l| check_label(field, l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(field_err(field, format!("Invalid value: {value:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Pod, FieldError> {
        let pod = parse(yaml.as_bytes())?;
        validate(&pod)?;
        Ok(pod)
    }

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: a\n    image: busybox\n";

    #[test]
    fn good_pod_in_yaml_and_json() {
        check(GOOD).unwrap();
        check(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"a","image":"busybox"}]}}"#).unwrap();
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = check("metadata: {name: web}\nspec:\n  containers:\n  - name: a\n    image: busybox\n    ports: [{containerPort: eighty}]\n").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].ports[0].containerPort");
        assert!(e.reason.contains("invalid type"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            ("metadata: {name: Web}\nspec: {containers: [{name: a, image: busybox}]}", "metadata.name"),
            ("metadata: {name: web}\nspec: {containers: []}", "spec.containers"),
            ("metadata: {name: web}\nspec: {containers: [{name: a}]}", "spec.containers[0].image"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b}, {name: a, image: b}]}", "spec.containers[1].name"),
            ("metadata: {name: web}\nspec: {restartPolicy: Sometimes, containers: [{name: a, image: b}]}", "spec.restartPolicy"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, volumeMounts: [{name: v, mountPath: /v}]}]}", "spec.containers[0].volumeMounts[0].name"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, resources: {limits: {memory: lots}}}]}", "spec.containers[0].resources.limits[memory]"),
            ("metadata: {name: web}\nspec: {volumes: [{name: v, hostPath: {path: rel}}], containers: [{name: a, image: b}]}", "spec.volumes[0].hostPath.path"),
            ("metadata: {name: web, labels: {'bad key': x}}\nspec: {containers: [{name: a, image: b}]}", "metadata.labels"),
            ("metadata: {name: web, labels: {'Example.com/x': x}}\nspec: {containers: [{name: a, image: b}]}", "metadata.labels"),
            ("metadata: {name: web, labels: {k: '-x'}}\nspec: {containers: [{name: a, image: b}]}", "metadata.labels"),
            ("metadata: {name: web, annotations: {'a/b/c': x}}\nspec: {containers: [{name: a, image: b}]}", "metadata.annotations"),
            ("metadata: {name: web}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: a, image: b, volumeMounts: [{name: v, mountPath: /proc/sys}]}]}", "spec.containers[0].volumeMounts[0].mountPath"),
            ("metadata: {name: web}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: a, image: b, volumeMounts: [{name: v, mountPath: /proc}]}]}", "spec.containers[0].volumeMounts[0].mountPath"),
            // Not applied yet, so refused rather than ignored; or malformed.
            ("metadata: {name: web}\nspec: {volumes: [{name: v, persistentVolumeClaim: {claimName: c}}], containers: [{name: a, image: b}]}", "spec.volumes[0].persistentVolumeClaim"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, envFrom: [{prefix: X_}]}]}", "spec.containers[0].envFrom[0]"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, envFrom: [{configMapRef: {name: c}, secretRef: {name: s}}]}]}", "spec.containers[0].envFrom[0]"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: k}, fieldRef: {fieldPath: metadata.name}}}]}]}", "spec.containers[0].env[0].valueFrom"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, env: [{name: X, valueFrom: {configMapKeyRef: {name: c, key: ''}}}]}]}", "spec.containers[0].env[0].valueFrom.configMapKeyRef.key"),
            ("metadata: {name: web}\nspec: {securityContext: {seccompProfile: {type: Bogus}}, containers: [{name: a, image: b}]}", "spec.securityContext.seccompProfile.type"),
            ("metadata: {name: web}\nspec: {hostUsers: false, hostNetwork: true, containers: [{name: a, image: b}]}", "spec.hostNetwork"),
            ("metadata: {name: web}\nspec: {hostUsers: false, hostPID: true, containers: [{name: a, image: b}]}", "spec.hostPID"),
            ("metadata: {name: web}\nspec: {containers: [{name: a, image: b, securityContext: {procMount: Unmasked}}]}", "spec.containers[0].securityContext.procMount"),
            ("metadata: {name: web}\nspec: {securityContext: {sysctls: [{name: 'Net.bad', value: '1'}]}, containers: [{name: a, image: b}]}", "spec.securityContext.sysctls[0].name"),
        ];
        for (yaml, field) in cases {
            assert_eq!(check(yaml).unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn label_and_annotation_sizes_are_kube_apiservers() {
        let pod = |meta: &str| {
            format!(
                "metadata: {{name: web, {meta}}}\nspec: {{containers: [{{name: a, image: b}}]}}"
            )
        };
        let long = "v".repeat(64);
        let e = check(&pod(&format!("labels: {{k: {long}}}"))).unwrap_err();
        assert!(
            e.reason.contains("must be no more than 63 characters"),
            "{e}"
        );
        assert!(e.reason.len() < 200, "the value is not echoed whole: {e}");
        assert!(check(&pod(&format!(
            "labels: {{example.com/k: {}}}",
            "v".repeat(63)
        )))
        .is_ok());
        assert!(check(&pod("labels: {k: ''}")).is_ok());
        let big = "a".repeat(256 * 1024);
        let e = check(&pod(&format!("annotations: {{k: {big}}}"))).unwrap_err();
        assert_eq!(e.reason, "Too long: must have at most 262144 bytes");
        assert!(check(&pod(&format!("annotations: {{k: {}}}", &big[..200_000]))).is_ok());
        // Lower-case checked: annotations keys are case-insensitive in their prefix.
        assert!(check(&pod("annotations: {Example.COM/Key: v}")).is_ok());
    }

    #[test]
    fn wrong_kind_is_refused() {
        let e = check("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap_err();
        assert!(
            e.reason.contains("Service") || e.reason.contains("kind"),
            "{e}"
        );
    }
}
