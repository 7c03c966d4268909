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
    let node = TestNode::with_api()?;
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
    node.settled()
}

fn read(node: &TestNode, p: &Value, path: &str) -> String {
    let out = node.exec(p, "c", &["cat", path]).expect("exec cat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn api_volumes_show_objects_and_the_pod_and_follow_updates() -> Result<()> {
    let node = TestNode::with_api()?;
    let file = node.dir.join("app.ini");
    std::fs::write(&file, "[app]\nmode = fast\n")?;
    let from_file = format!("--from-file={}", file.display());
    node.kubectl_ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
        &from_file,
    ])?;
    node.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ])?;
    node.kubectl_create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: volumes, labels: {app: web}, annotations: {note: first}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {fsGroup: 2000}
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {limits: {memory: 64Mi}}
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: items, mountPath: /items}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
    - {name: proj, mountPath: /proj}
    - {name: cfg, mountPath: /etc/greeting, subPath: greeting}
    # A key the ConfigMap lacks: its subPath directory must not break later updates.
    - {name: cfg, mountPath: /missing, subPath: nokey}
    - {name: opt, mountPath: /opt}
  volumes:
  - {name: cfg, configMap: {name: app}}
  - name: items
    configMap:
      name: app
      items: [{key: greeting, path: dir/hi, mode: 0400}]
  - {name: sec, secret: {secretName: db, defaultMode: 0440}}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: note, fieldRef: {fieldPath: "metadata.annotations['note']"}}
      - {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
  - name: proj
    projected:
      sources:
      - configMap: {name: app, items: [{key: greeting, path: g}]}
      - secret: {name: db}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  - {name: opt, configMap: {name: absent, optional: true}}
"#,
        &[],
    )?;
    let p = wait_for("volumes running", T, || {
        pod(&node, "volumes").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    assert_eq!(read(&node, &p, "/cfg/greeting"), "hello");
    assert_eq!(read(&node, &p, "/cfg/app.ini"), "[app]\nmode = fast\n");
    assert_eq!(read(&node, &p, "/items/dir/hi"), "hello");
    assert_eq!(read(&node, &p, "/sec/password"), "s3cret");
    assert_eq!(read(&node, &p, "/info/labels"), "app=\"web\"");
    assert_eq!(read(&node, &p, "/info/note"), "first");
    assert_eq!(read(&node, &p, "/info/mem"), "64");
    assert_eq!(read(&node, &p, "/proj/g"), "hello");
    assert_eq!(read(&node, &p, "/proj/password"), "s3cret");
    assert_eq!(read(&node, &p, "/proj/name"), "volumes");
    assert_eq!(read(&node, &p, "/etc/greeting"), "hello");
    let stat = |path: &str| {
        let out = node
            .exec(&p, "c", &["stat", "-L", "-c", "%a %g", path])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Modes as asked, with the fsGroup's read bit and group (kubelet's SetVolumeOwnership).
    assert_eq!(stat("/items/dir/hi"), "440 2000");
    assert_eq!(stat("/sec/password"), "440 2000");
    assert_eq!(stat("/cfg/greeting"), "644 2000");
    let ls = node.exec(&p, "c", &["ls", "-a", "/cfg", "/opt"])?;
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.contains("..data") && ls.contains("..20"), "{ls}");
    let write = node.exec(&p, "c", &["sh", "-c", "echo x > /cfg/new"])?;
    assert!(
        !write.status.success(),
        "an API volume is read-only to the pod"
    );
    // The secret volume is in memory.
    let mounts = read(&node, &p, "/proc/mounts");
    assert!(
        mounts.lines().any(|l| l.starts_with("tmpfs /sec ")),
        "{mounts}"
    );

    // Updates reach the running pod, except under subPath.
    node.kubectl_ok(&[
        "patch",
        "configmap",
        "app",
        "-p",
        r#"{"data":{"greeting":"bye"}}"#,
    ])?;
    node.kubectl_ok(&["label", "pod", "volumes", "color=blue"])?;
    wait_for("update seen", Duration::from_secs(20), || {
        (read(&node, &p, "/cfg/greeting") == "bye"
            && read(&node, &p, "/proj/g") == "bye"
            && read(&node, &p, "/info/labels") == "app=\"web\"\ncolor=\"blue\"")
            .then_some(())
    })?;
    assert_eq!(read(&node, &p, "/etc/greeting"), "hello");

    // A ConfigMap that is not there holds the pod with kubelet's FailedMount, until it is.
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: later}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600'], volumeMounts: [{name: v, mountPath: /v}]}\n  volumes: [{name: v, configMap: {name: later}}]\n",
        &[],
    )?;
    wait_for("FailedMount", T, || {
        let events = node
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=later",
            ])
            .ok()?;
        events.contains("FailedMount").then_some(())?;
        events
            .contains("MountVolume.SetUp failed for volume \"v\" : configmap \"later\" not found")
            .then_some(())
    })?;
    let w = TestNode::container_status(&pod(&node, "later").unwrap(), "c")["state"]["waiting"]
        ["reason"]
        .clone();
    assert_eq!(w, "ContainerCreating");
    node.kubectl_ok(&["create", "configmap", "later", "--from-literal=x=1"])?;
    wait_for("later runs", T, || {
        pod(&node, "later").filter(|p| TestNode::running(p, "c"))
    })?;

    node.kubectl_ok(&["delete", "pod", "volumes", "later"])?;
    node.settled()
}

/// A symlink planted in a shared volume cannot lead a subPath mount out of it.
#[test]
fn sub_paths_stay_inside_their_volume() -> Result<()> {
    let node = TestNode::with_api()?;
    node.kubectl_create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: escape}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: plant
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "ln -s /etc /data/out && ln -s ../data/inside /data/rel && mkdir /data/inside && echo ok > /data/inside/f"]
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    env: [{name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    volumeMounts:
    - {name: data, mountPath: /inside, subPath: inside}
    - {name: data, mountPath: /mine, subPathExpr: "per-$(POD)"}
  - name: bad
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    volumeMounts: [{name: data, mountPath: /x, subPath: out/passwd}]
  volumes: [{name: data, emptyDir: {}}]
"#,
        &[],
    )?;
    let p = wait_for("c runs, bad refused", T, || {
        let p = pod(&node, "escape")?;
        let w = TestNode::container_status(&p, "bad")["state"]["waiting"].clone();
        (TestNode::running(&p, "c")
            && w["reason"] == "CreateContainerConfigError"
            && w["message"].as_str()?.contains("is not within volume path"))
        .then_some(p)
    })
    .with_context(|| node.agent_log())?;
    assert_eq!(read(&node, &p, "/inside/f"), "ok\n");
    let pid = node.container_pid(&p, "c")?;
    let made = node.exec(&p, "c", &["ls", "-d", "/mine"])?;
    assert!(made.status.success(), "subPathExpr directory made");
    let host = std::fs::read_dir(node.dir.join("root/pods"))?
        .flatten()
        .next()
        .unwrap()
        .path();
    assert!(
        host.join("volumes/kubernetes.io~empty-dir/data/per-escape")
            .is_dir(),
        "{pid}"
    );
    node.kubectl_ok(&["delete", "pod", "escape"])?;
    node.settled()
}

/// Service accounts: `default` in every namespace, `kubectl create token`, the kube-api-access
/// volume and the service variables, a pod calling the API with its own token through the
/// service address (checked against the mounted CA), and tokens refused once they may not be.
#[test]
fn pods_call_the_api_with_their_service_account() -> Result<()> {
    let node = TestNode::with_api()?;
    wait_for("default service account", T, || {
        node.kubectl_ok(&["get", "sa", "default"]).ok()
    })?;
    node.kubectl_ok(&["create", "serviceaccount", "robot"])?;
    let short = node.kubectl(&["create", "token", "robot", "--duration=1m"]);
    let err = String::from_utf8_lossy(&short.stderr).into_owned();
    assert!(
        !short.status.success() && err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let token = node.kubectl_ok(&["create", "token", "robot", "--duration=10m"])?;
    let token = token.trim().to_owned();
    let as_token = |token: &str, path: &str| -> Result<String> {
        let out = node
            .api_curl(false)?
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{}{path}", node.api_url()))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(as_token(&token, "/api/v1/namespaces/default/pods")?, "200");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(as_token(&forged, "/api/v1/namespaces/default/pods")?, "401");

    // A pod of a service account that does not exist is refused at admission.
    let refused = node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: nobody}\nspec:\n  serviceAccountName: ghost\n  containers: [{name: c, image: busybox}]\n",
        &[],
    );
    let err = format!("{:?}", refused.err());
    assert!(
        err.contains(
            "error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        ),
        "{err}"
    );

    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: caller}\nspec:\n  serviceAccountName: robot\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}\n",
        &[],
    )?;
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec:\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}\n",
        &[],
    )?;
    let p = wait_for("caller running", T, || {
        pod(&node, "caller").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    let q = wait_for("quiet running", T, || {
        pod(&node, "quiet").filter(|p| TestNode::running(p, "c"))
    })?;
    let volumes = p["spec"]["volumes"].to_string();
    assert!(volumes.contains("kube-api-access-"), "{volumes}");
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(read(&node, &p, &format!("{dir}/namespace")), "default");
    let ca = read(&node, &p, &format!("{dir}/ca.crt"));
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let pod_token = read(&node, &p, &format!("{dir}/token"));
    // Extended to a year, as kube-apiserver extends the token kubelet asks for (3607 s), which
    // is when it warns.
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = pod_token.split('.').nth(1).unwrap_or_default();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?
    };
    let iat = claims["iat"].as_i64().unwrap_or_default();
    assert_eq!(
        claims["exp"].as_i64(),
        Some(iat + 365 * 24 * 3600),
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["warnafter"].as_i64(),
        Some(iat + 3607),
        "{claims}"
    );
    let ls = node.exec(&q, "c", &["ls", dir])?;
    assert!(
        !ls.status.success(),
        "automountServiceAccountToken: false mounts nothing"
    );
    let pid = node.container_pid(&p, "c")?;
    let env = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ"))?)
        .replace('\0', "\n");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let (host, port) = (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    );
    assert!(
        !host.is_empty() && var("KUBERNETES_PORT") == format!("tcp://{host}:{port}"),
        "{env}"
    );

    // From the pod's network namespace, verifying the server with the mounted CA.
    let ca_file = node.dir.join("pod-ca.crt");
    std::fs::write(&ca_file, &ca)?;
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "--",
            "curl",
            "-s",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&ca_file)
        .arg("-H")
        .arg(format!("Authorization: Bearer {pod_token}"))
        .arg(format!(
            "https://{host}:{port}/api/v1/namespaces/default/pods"
        ))
        .output()?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        body.contains("\"kind\":\"PodList\"") && body.contains("\"caller\""),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With no RBAC, a service account may only read its own namespace: its token is no way
    // to start a privileged pod, read Secrets, or exec through the kubelet API.
    let create = node
        .api_curl(false)?
        .args(["-X", "POST", "-H", "Content-Type: application/json", "-H"])
        .arg(format!("Authorization: Bearer {pod_token}"))
        .args(["-d", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#])
        .arg(format!("{}/api/v1/namespaces/default/pods", node.api_url()))
        .output()?;
    let create = String::from_utf8_lossy(&create.stdout).into_owned();
    assert!(create.contains(r#"pods is forbidden: User \"system:serviceaccount:default:robot\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""#), "{create}");
    assert_eq!(
        as_token(&pod_token, "/api/v1/namespaces/default/secrets")?,
        "403"
    );
    assert_eq!(
        as_token(&pod_token, "/api/v1/namespaces/kube-system/pods")?,
        "403"
    );
    // Issuer discovery is open to service accounts.
    for doc in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        assert_eq!(as_token(&pod_token, doc)?, "200", "{doc}");
    }
    let kubelet = node
        .api_curl(false)?
        .args(["-k", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {pod_token}"))
        .arg("https://127.0.0.1:10250/pods")
        .output()?;
    // Authenticated there through TokenReview, and refused as kubelet refuses a user its
    // authorizer does not allow.
    assert_eq!(
        String::from_utf8_lossy(&kubelet.stdout),
        "403",
        "the kubelet API serves no service account"
    );
    // TokenReview knows the token (what a kubelet of a real cluster would ask).
    let review = node
        .api_curl(true)?
        .args(["-X", "POST", "-H", "Content-Type: application/json", "-d"])
        .arg(format!(r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{pod_token}"}}}}"#))
        .arg(format!("{}/apis/authentication.k8s.io/v1/tokenreviews", node.api_url()))
        .output()?;
    let review = String::from_utf8_lossy(&review.stdout).into_owned();
    assert!(
        review.contains("\"username\":\"system:serviceaccount:default:robot\""),
        "{review}"
    );

    // A token file a non-root pod can read even at 0400: it belongs to the pod's user
    // (kubelet's FsUser).
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reader}\nspec:\n  serviceAccountName: robot\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  securityContext: {runAsUser: 1000}\n  containers:\n  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600'], volumeMounts: [{name: t, mountPath: /t}]}\n  volumes: [{name: t, projected: {defaultMode: 0400, sources: [{serviceAccountToken: {path: token, audience: vault}}]}}]\n",
        &[],
    )?;
    wait_for("reader running", T, || {
        node.api_pod("reader").filter(|p| TestNode::running(p, "c"))
    })?;
    let out = node.kubectl(&[
        "exec",
        "reader",
        "--",
        "sh",
        "-c",
        "id -u; wc -c < /t/token",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.starts_with("1000\n"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its audience is not the API's: the API refuses it.
    let reader = node.api_pod("reader").context("reader")?;
    let aud_token = read(&node, &reader, "/t/token");
    assert_eq!(
        as_token(&aud_token, "/api/v1/namespaces/default/pods")?,
        "401"
    );
    node.kubectl_ok(&["delete", "pod", "reader"])?;

    // A token bound to a pod ends with the pod; one of a deleted service account with it.
    node.kubectl_ok(&["delete", "pod", "caller", "quiet"])?;
    wait_for("pods gone", T, || node.processes().is_empty().then_some(()))?;
    wait_for("bound token refused", T, || {
        (as_token(&pod_token, "/api/v1/namespaces").ok()? == "401").then_some(())
    })?;
    node.kubectl_ok(&["delete", "serviceaccount", "robot"])?;
    assert_eq!(as_token(&token, "/api/v1/namespaces")?, "401");
    node.assert_clean()
}

/// A killed agent takes its pods' API volumes back as they are: nothing restarts, the tmpfs
/// volumes keep their content, and an update made while the agent was down arrives once it is
/// back; deleting the pod afterwards leaves nothing mounted.
#[test]
fn api_volumes_survive_an_agent_kill() -> Result<()> {
    let mut node = TestNode::with_api()?;
    node.kubectl_ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
    ])?;
    node.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ])?;
    node.kubectl_create(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: steady}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n    volumeMounts: [{name: cfg, mountPath: /cfg}, {name: sec, mountPath: /sec}]\n  volumes:\n  - {name: cfg, configMap: {name: app}}\n  - {name: sec, secret: {secretName: db}}\n",
        &[],
    )?;
    let p = wait_for("steady running", T, || {
        pod(&node, "steady").filter(|p| TestNode::running(p, "c"))
    })
    .with_context(|| node.agent_log())?;
    let id = TestNode::container_status(&p, "c")["containerID"].clone();
    node.stop_agent(nix::sys::signal::Signal::SIGKILL)?;
    // The pod goes on without the agent, its volumes as they were.
    assert_eq!(read(&node, &p, "/cfg/greeting"), "hello");
    assert_eq!(read(&node, &p, "/sec/password"), "s3cret");
    node.start_agent()?;
    node.wait_api()?;
    node.kubectl_ok(&[
        "patch",
        "configmap",
        "app",
        "-p",
        r#"{"data":{"greeting":"again"}}"#,
    ])?;
    wait_for("the update after the restart", T, || {
        (read(&node, &p, "/cfg/greeting") == "again").then_some(())
    })
    .with_context(|| node.agent_log())?;
    let p = pod(&node, "steady").context("steady")?;
    let c = TestNode::container_status(&p, "c");
    assert_eq!(c["containerID"], id, "the container was not restarted");
    assert_eq!(c["restartCount"], 0);
    assert_eq!(read(&node, &p, "/sec/password"), "s3cret");
    node.kubectl_ok(&["delete", "pod", "steady"])?;
    node.settled()
}
