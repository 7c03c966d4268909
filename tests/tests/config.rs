//! Configuration from the API for a pod's environment: ConfigMaps in the built-in API (as kubectl
//! creates and lists them) and Secrets, read into `env` and `envFrom` at each container start.

use std::time::Duration;

use anyhow::{Context, Result};
use nodelet_tests::{wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn pod(node: &TestNode, name: &str) -> Option<Value> {
    node.api_pod(name)
}

#[test]
fn config_maps_and_secrets_fill_the_environment() -> Result<()> {
    let mut node = TestNode::new()?;
    node.start_agent()?;
    node.wait_api()?;
    let env_file = node.dir.join("app.env");
    std::fs::write(&env_file, "# settings\nMODE=fast\nLEVEL=3\n")?;
    let refused = node.kubectl(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
        "--from-literal=bad key=x",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success()
            && err.contains("a valid config key must consist of alphanumeric characters"),
        "{err}"
    );
    node.kubectl_ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
    ])?;
    node.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "--from-env-file",
        &env_file.display().to_string(),
    ])?;
    node.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ])?;
    let table = node.kubectl_ok(&["get", "cm"])?;
    assert!(
        table.starts_with("NAME") && table.contains("DATA"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["settings", "2"])),
        "{table}"
    );
    node.kubectl_create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    envFrom:
    - {configMapRef: {name: settings}, prefix: APP_}
    - {configMapRef: {name: absent, optional: true}}
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: app, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: MAYBE, valueFrom: {secretKeyRef: {name: db, key: nope, optional: true}}}
    - {name: APP_MODE, value: "overridden by env"}
"#,
        &[],
    )?;
    let p = wait_for("configured running", T, || {
        pod(&node, "configured").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    let pid = node.container_pid(&p, "c")?;
    let env = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ"))?)
        .replace('\0', "\n");
    for want in [
        "GREETING=hello",
        "PASSWORD=s3cret",
        "APP_LEVEL=3",
        "APP_MODE=overridden by env",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in {env}");
    }
    assert!(!env.contains("MAYBE="), "{env}");

    // A missing ConfigMap holds the container with kubelet's reason, until it exists.
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600'], env: [{name: X, valueFrom: {configMapKeyRef: {name: later, key: x}}}]}\n",
        &[],
    )?;
    wait_for("CreateContainerConfigError", T, || {
        let p = pod(&node, "waiting")?;
        let w = TestNode::container_status(&p, "c")["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError"
            && w["message"] == "configmap \"later\" not found")
            .then_some(())
    })?;
    let (_, status) = {
        let out = node.kubectl_ok(&["get", "pod", "waiting", "--no-headers"])?;
        let cells: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        (cells[1].clone(), cells[2].clone())
    };
    assert_eq!(status, "CreateContainerConfigError");
    node.kubectl_ok(&["create", "configmap", "later", "--from-literal=x=1"])?;
    wait_for("waiting runs once the ConfigMap exists", T, || {
        pod(&node, "waiting").filter(|p| TestNode::running(p, "c"))
    })?;

    // An immutable ConfigMap keeps its data.
    node.kubectl_create(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\nimmutable: true\ndata: {k: v}\n",
        &[],
    )?;
    let out = node.kubectl(&[
        "patch",
        "configmap",
        "frozen",
        "-p",
        r#"{"data":{"k":"w"}}"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("field is immutable when `immutable` is set"),
        "{err}"
    );

    node.kubectl_ok(&["delete", "pod", "configured", "waiting"])?;
    wait_for("pods gone", T, || node.processes().is_empty().then_some(()))?;
    node.assert_clean()
}
