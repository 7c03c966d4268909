//! Validation of a container's lifecycle fields as kube-apiserver checks them
//! (`validation.go`): probes, hooks, the init container `restartPolicy`, termination messages.
//! A pod that fails here runs nothing.

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifest::{field_err, FieldError};

/// `path` is the container's (`spec.containers[0]`); `init` whether it is an init container;
/// `grace` the pod's termination grace period (a sleep hook may not outlast it).
pub fn validate(path: &str, c: &Container, init: bool, grace: i64) -> Result<(), FieldError> {
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    match (init, c.restart_policy.as_deref()) {
        (_, None) => {}
        (true, Some("Always")) => {}
        (true, Some(other)) => {
            return Err(field_err(
                format!("{path}.restartPolicy"),
                format!("Unsupported value: {other:?}: supported values: \"Always\""),
            ))
        }
        (false, Some(_)) => {
            return Err(field_err(
                format!("{path}.restartPolicy"),
                "Forbidden: may not be set for non-init containers",
            ))
        }
    }
    if init && !sidecar {
        for (field, set) in [
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ] {
            if set {
                return Err(field_err(
                    format!("{path}.{field}"),
                    "Forbidden: may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    for (field, probe, liveness_like) in [
        ("livenessProbe", &c.liveness_probe, true),
        ("readinessProbe", &c.readiness_probe, false),
        ("startupProbe", &c.startup_probe, true),
    ] {
        if let Some(p) = probe {
            validate_probe(&format!("{path}.{field}"), p, c, liveness_like)?;
        }
    }
    if let Some(l) = &c.lifecycle {
        for (field, hook) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = hook {
                validate_hook(&format!("{path}.lifecycle.{field}"), h, c, grace)?;
            }
        }
    }
    if let Some(policy) = c.termination_message_policy.as_deref() {
        if !["File", "FallbackToLogsOnError"].contains(&policy) {
            return Err(field_err(
                format!("{path}.terminationMessagePolicy"),
                format!("Unsupported value: {policy:?}: supported values: \"File\", \"FallbackToLogsOnError\""),
            ));
        }
    }
    if let Some(p) = c.termination_message_path.as_deref() {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(field_err(
                format!("{path}.terminationMessagePath"),
                format!("Invalid value: {p:?}: must be an absolute path"),
            ));
        }
    }
    Ok(())
}

/// The handlers given, in kube-apiserver's order, by field name.
fn handlers(fields: [(&str, bool); 5]) -> Vec<&str> {
    fields
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
}

fn one_handler(path: &str, given: &[&str]) -> Result<(), FieldError> {
    match given {
        [] => Err(field_err(
            path,
            "Required value: must specify a handler type",
        )),
        [_] => Ok(()),
        [_, second, ..] => Err(field_err(
            format!("{path}.{second}"),
            "Forbidden: may not specify more than 1 handler type",
        )),
    }
}

fn validate_probe(
    path: &str,
    p: &Probe,
    c: &Container,
    liveness_like: bool,
) -> Result<(), FieldError> {
    let given = handlers([
        ("exec", p.exec.is_some()),
        ("httpGet", p.http_get.is_some()),
        ("tcpSocket", p.tcp_socket.is_some()),
        ("grpc", p.grpc.is_some()),
        ("sleep", false),
    ]);
    one_handler(path, &given)?;
    for (field, value) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            return Err(field_err(
                format!("{path}.{field}"),
                format!("Invalid value: {v}: must be greater than or equal to 0"),
            ));
        }
    }
    if liveness_like {
        if let Some(v) = p.success_threshold.filter(|v| *v != 1 && *v != 0) {
            return Err(field_err(
                format!("{path}.successThreshold"),
                format!("Invalid value: {v}: must be 1"),
            ));
        }
    }
    match p.termination_grace_period_seconds {
        Some(_) if !liveness_like => {
            return Err(field_err(
                format!("{path}.terminationGracePeriodSeconds"),
                "Invalid value: must not be set for readinessProbes",
            ))
        }
        Some(v) if v <= 0 => {
            return Err(field_err(
                format!("{path}.terminationGracePeriodSeconds"),
                format!("Invalid value: {v}: must be greater than 0"),
            ))
        }
        _ => {}
    }
    if let Some(e) = &p.exec {
        check_command(&format!("{path}.exec.command"), e.command.as_deref())?;
    }
    if let Some(h) = &p.http_get {
        check_http(&format!("{path}.httpGet"), h, c)?;
    }
    if let Some(t) = &p.tcp_socket {
        check_port(&format!("{path}.tcpSocket.port"), &t.port, c)?;
    }
    if let Some(g) = &p.grpc {
        if !(1..=65535).contains(&g.port) {
            return Err(field_err(
                format!("{path}.grpc.port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    g.port
                ),
            ));
        }
    }
    Ok(())
}

fn validate_hook(
    path: &str,
    h: &LifecycleHandler,
    c: &Container,
    grace: i64,
) -> Result<(), FieldError> {
    let given = handlers([
        ("exec", h.exec.is_some()),
        ("httpGet", h.http_get.is_some()),
        ("tcpSocket", h.tcp_socket.is_some()),
        ("grpc", false),
        ("sleep", h.sleep.is_some()),
    ]);
    one_handler(path, &given)?;
    if h.tcp_socket.is_some() {
        // Accepted by kube-apiserver for compatibility, never run by kubelet: refused here
        // rather than accepted and ignored.
        return Err(field_err(
            format!("{path}.tcpSocket"),
            "Forbidden: tcpSocket lifecycle hooks are not run by kubelet; use exec, httpGet or sleep",
        ));
    }
    if let Some(e) = &h.exec {
        check_command(&format!("{path}.exec.command"), e.command.as_deref())?;
    }
    if let Some(g) = &h.http_get {
        check_http(&format!("{path}.httpGet"), g, c)?;
    }
    if let Some(s) = &h.sleep {
        if s.seconds < 0 || s.seconds > grace {
            return Err(field_err(
                format!("{path}.sleep.seconds"),
                format!(
                    "Invalid value: {}: must be non-negative and less than terminationGracePeriodSeconds ({grace})",
                    s.seconds
                ),
            ));
        }
    }
    Ok(())
}

fn check_command(path: &str, command: Option<&[String]>) -> Result<(), FieldError> {
    if command.is_none_or(|c| c.is_empty()) {
        return Err(field_err(path, "Required value"));
    }
    Ok(())
}

fn check_http(
    path: &str,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
    c: &Container,
) -> Result<(), FieldError> {
    check_port(&format!("{path}.port"), &h.port, c)?;
    if let Some(scheme) = h.scheme.as_deref() {
        if !["HTTP", "HTTPS"].contains(&scheme) {
            return Err(field_err(
                format!("{path}.scheme"),
                format!("Unsupported value: {scheme:?}: supported values: \"HTTP\", \"HTTPS\""),
            ));
        }
    }
    for (k, header) in h.http_headers.iter().flatten().enumerate() {
        let valid = !header.name.is_empty()
            && header
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(field_err(
                format!("{path}.httpHeaders[{k}].name"),
                format!("Invalid value: {:?}: a valid HTTP header must consist of alphanumeric characters or '-'", header.name),
            ));
        }
    }
    Ok(())
}

/// A port by number (1–65535) or by name, and then a name one of the container's ports has
/// (kube-apiserver checks only the name's form; kubelet fails such a probe at every try, so it
/// is refused here, where the mistake is cheap to see).
fn check_port(path: &str, port: &IntOrString, c: &Container) -> Result<(), FieldError> {
    match port {
        IntOrString::Int(n) if !(1..=65535).contains(n) => Err(field_err(
            path,
            format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
        )),
        IntOrString::Int(_) => Ok(()),
        IntOrString::String(name) => super::action::port(port, c).map(|_| ()).map_err(|_| {
            field_err(
                path,
                format!(
                    "Invalid value: {name:?}: no port of container {:?} has this name",
                    c.name
                ),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::pod::manifest::{parse, validate};

    fn check(containers: &str) -> Result<(), String> {
        let yaml = format!("metadata: {{name: p}}\nspec: {{{containers}}}");
        validate(&parse(yaml.as_bytes()).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn lifecycle_fields_are_validated_as_kube_apiserver_does() {
        let ok = "containers: [{name: a, image: b, ports: [{name: http, containerPort: 80}], livenessProbe: {httpGet: {port: http}}, readinessProbe: {tcpSocket: {port: 80}, successThreshold: 3}, startupProbe: {grpc: {port: 9090}}, lifecycle: {postStart: {exec: {command: [true]}}, preStop: {sleep: {seconds: 5}}}}], initContainers: [{name: i, image: b}, {name: s, image: b, restartPolicy: Always, readinessProbe: {exec: {command: [true]}}}]";
        assert_eq!(check(ok), Ok(()));
        for (spec, want) in [
            (
                "containers: [{name: a, image: b, livenessProbe: {exec: {command: [true]}, httpGet: {port: 80}}}]",
                "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
            ),
            (
                "containers: [{name: a, image: b, livenessProbe: {periodSeconds: 3}}]",
                "spec.containers[0].livenessProbe: Required value: must specify a handler type",
            ),
            (
                "containers: [{name: a, image: b, readinessProbe: {httpGet: {port: web}}}]",
                "spec.containers[0].readinessProbe.httpGet.port: Invalid value: \"web\": no port of container \"a\" has this name",
            ),
            (
                "containers: [{name: a, image: b, livenessProbe: {exec: {command: [true]}, failureThreshold: -1}}]",
                "spec.containers[0].livenessProbe.failureThreshold: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                "containers: [{name: a, image: b, startupProbe: {exec: {command: [true]}, successThreshold: 2}}]",
                "spec.containers[0].startupProbe.successThreshold: Invalid value: 2: must be 1",
            ),
            (
                "containers: [{name: a, image: b}], initContainers: [{name: i, image: b, restartPolicy: OnFailure}]",
                "spec.initContainers[0].restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
            ),
            (
                "containers: [{name: a, image: b, restartPolicy: Always}]",
                "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
            ),
            (
                "containers: [{name: a, image: b}], initContainers: [{name: i, image: b, livenessProbe: {exec: {command: [true]}}}]",
                "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
            ),
            (
                "containers: [{name: a, image: b}], initContainers: [{name: a, image: b}]",
                "spec.containers[0].name: Duplicate value: \"a\"",
            ),
            (
                "terminationGracePeriodSeconds: 10, containers: [{name: a, image: b, lifecycle: {preStop: {sleep: {seconds: 11}}}}]",
                "spec.containers[0].lifecycle.preStop.sleep.seconds: Invalid value: 11: must be non-negative and less than terminationGracePeriodSeconds (10)",
            ),
            (
                "containers: [{name: a, image: b, lifecycle: {preStop: {tcpSocket: {port: 80}}}}]",
                "spec.containers[0].lifecycle.preStop.tcpSocket: Forbidden: tcpSocket lifecycle hooks are not run by kubelet; use exec, httpGet or sleep",
            ),
            (
                "containers: [{name: a, image: b, terminationMessagePolicy: Always}]",
                "spec.containers[0].terminationMessagePolicy: Unsupported value: \"Always\": supported values: \"File\", \"FallbackToLogsOnError\"",
            ),
            (
                "containers: [{name: a, image: b, readinessProbe: {exec: {command: [true]}, terminationGracePeriodSeconds: 5}}]",
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes",
            ),
        ] {
            assert_eq!(check(spec), Err(want.to_owned()), "{spec}");
        }
    }
}
