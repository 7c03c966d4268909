//! The pod network in test nodes: an address per pod, real source addresses between pods on one
//! node and across nodes (host-gw routes over a veth "underlay" between two test nodes), bad
//! CNI configuration, address exhaustion, and nothing left behind.

use std::time::Duration;

use anyhow::{ensure, Result};
use nodelet_tests::{wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn running(pod: &Value, container: &str) -> bool {
    TestNode::container_status(pod, container)["state"]["running"].is_object()
}

fn logs(node: &TestNode, pod: &str, container: &str) -> String {
    let out = node.nodelet(&["logs", &format!("{pod}-{}", node.name), "-c", container]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server that answers with the address the request came from.
const ECHO_SERVER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: s\n    image: luksa/kubia\n    command: [sh, -c, 'mkdir -p /w/cgi-bin && printf \"#!/bin/sh\\nprintf \\\"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\\\"\\necho from \\$REMOTE_ADDR\\n\" > /w/cgi-bin/index.cgi && chmod +x /w/cgi-bin/index.cgi && exec httpd -f -p 8080 -h /w']\n";

fn client(name: &str, target: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'until wget -qO- http://{target}:8080/; do sleep 0.2; done; sleep 3600']\n"
    )
}

/// The address in "from 10.0.0.1" or "from [::ffff:10.0.0.1]" (httpd listens on IPv6).
fn seen_from(answer: &str) -> String {
    let addr = answer
        .trim()
        .trim_start_matches("from ")
        .trim_matches(['[', ']']);
    addr.trim_start_matches("::ffff:").to_owned()
}

fn node_with_agent(name: &str, extra: &str) -> Result<TestNode> {
    let mut node = TestNode::with_config(name, extra)?;
    node.start_agent()?;
    Ok(node)
}

#[test]
fn pods_get_their_own_address_and_see_each_others_real_one() -> Result<()> {
    let node = node_with_agent("node1", "")?;
    node.write_manifest("server.yaml", ECHO_SERVER);
    let server = node.wait_pod("server", "running with an IP", T, |p| {
        running(p, "s") && !TestNode::pod_ip(p).is_empty()
    })?;
    let server_ip = TestNode::pod_ip(&server);
    ensure!(
        server_ip.starts_with("10.244.0."),
        "default pod CIDR: {server_ip}"
    );
    node.write_manifest("client.yaml", &client("client", &server_ip));
    let client = node.wait_pod("client", "running", T, |p| {
        running(p, "c") && !TestNode::pod_ip(p).is_empty()
    })?;
    let client_ip = TestNode::pod_ip(&client);
    ensure!(client_ip != server_ip);
    let seen = wait_for("the server's answer", T, || {
        let l = logs(&node, "client", "c");
        l.contains("from ").then_some(l)
    })?;
    ensure!(
        seen_from(&seen) == client_ip,
        "no NAT: the server sees the client's own address, got {seen:?}"
    );

    let hosts = node.exec(&client, "c", &["cat", "/etc/hosts"])?;
    ensure!(
        String::from_utf8_lossy(&hosts.stdout).contains(&format!("{client_ip}\tclient-node1\n"))
    );
    let table = String::from_utf8(node.nodelet(&["pods"]).stdout)?;
    ensure!(
        table
            .lines()
            .any(|l| l.contains("server-node1") && l.trim_end().ends_with(&server_ip)),
        "{table}"
    );
    // The host-local store holds one file per pod, in the reference plugin's format.
    let uid = client["metadata"]["uid"].as_str().unwrap_or_default();
    let record = std::fs::read(node.dir.join("cni/data/networks/nodelet").join(&client_ip))?;
    ensure!(record == format!("{uid}\r\neth0").into_bytes());
    // No NAT rule anywhere: the default configuration has ipMasq false.
    let nft = node.command("nft").args(["list", "ruleset"]).output();
    if let Ok(out) = nft {
        ensure!(
            !String::from_utf8_lossy(&out.stdout).contains("masquerade"),
            "no masquerade rule"
        );
    }

    node.remove_manifest("client.yaml");
    node.remove_manifest("server.yaml");
    node.wait_gone("client", T)?;
    node.wait_gone("server", T)?;
    node.assert_clean()
}

#[test]
fn pods_on_two_nodes_reach_each_other_with_their_own_addresses() -> Result<()> {
    let peer = |cidr: &str, ip: &str| format!("staticPeers: [{{podCIDR: {cidr}, nodeIP: {ip}}}]\n");
    let mut a = TestNode::with_config(
        "node-a",
        &format!(
            "podCIDR: 10.244.1.0/24\nnodeIP: 192.168.77.1\n{}",
            peer("10.244.2.0/24", "192.168.77.2")
        ),
    )?;
    let mut b = TestNode::with_config(
        "node-b",
        &format!(
            "podCIDR: 10.244.2.0/24\nnodeIP: 192.168.77.2\n{}",
            peer("10.244.1.0/24", "192.168.77.1")
        ),
    )?;
    // The underlay: a veth pair between the two nodes' namespaces (never the host's).
    let netns_b = b.reaper.to_string();
    let run = |node: &TestNode, args: &[&str]| -> Result<()> {
        let out = node.net_command("ip").args(args).output()?;
        ensure!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(
        &a,
        &[
            "link", "add", "under0", "type", "veth", "peer", "name", "under1", "netns", &netns_b,
        ],
    )?;
    run(&a, &["addr", "add", "192.168.77.1/24", "dev", "under0"])?;
    run(&a, &["link", "set", "under0", "up"])?;
    run(&b, &["addr", "add", "192.168.77.2/24", "dev", "under1"])?;
    run(&b, &["link", "set", "under1", "up"])?;
    a.start_agent()?;
    b.start_agent()?;

    b.write_manifest("server.yaml", ECHO_SERVER);
    let server = b.wait_pod("server", "running", T, |p| {
        running(p, "s") && !TestNode::pod_ip(p).is_empty()
    })?;
    let server_ip = TestNode::pod_ip(&server);
    ensure!(server_ip.starts_with("10.244.2."), "{server_ip}");
    ensure!(server["status"]["hostIP"] == "192.168.77.2");
    a.write_manifest("client.yaml", &client("client", &server_ip));
    let client = a.wait_pod("client", "running", T, |p| {
        running(p, "c") && !TestNode::pod_ip(p).is_empty()
    })?;
    let client_ip = TestNode::pod_ip(&client);
    ensure!(client_ip.starts_with("10.244.1."), "{client_ip}");
    let seen = wait_for("the answer across nodes", T, || {
        let l = logs(&a, "client", "c");
        l.contains("from ").then_some(l)
    })?;
    ensure!(seen_from(&seen) == client_ip, "flat network: {seen:?}");

    a.remove_manifest("client.yaml");
    b.remove_manifest("server.yaml");
    a.wait_gone("client", T)?;
    b.wait_gone("server", T)?;
    a.assert_clean()?;
    b.assert_clean()
}

#[test]
fn a_bad_cni_config_holds_pods_with_its_reason_until_fixed() -> Result<()> {
    let mut node = TestNode::new()?;
    let conf_dir = node.dir.join("cni/net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let conf = conf_dir.join("10-bad.conflist");
    std::fs::write(
        &conf,
        r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.66.0.0/24","gateway":"10.67.0.1"}]]}}]}"#,
    )?;
    node.start_agent()?;
    node.write_manifest("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox, command: [sleep, '3600']}\n");
    let waiting = node.wait_pod("p", "waiting on the network", T, |p| {
        TestNode::container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gateway"))
    })?;
    let message = TestNode::container_status(&waiting, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        message.contains("10-bad.conflist")
            && message.contains("10.67.0.1 is outside the subnet 10.66.0.0/24"),
        "{message}"
    );
    ensure!(
        node.processes().is_empty(),
        "no half-wired sandbox is left running: {:?}",
        node.processes()
    );

    std::fs::write(
        &conf,
        r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.66.0.0/24"}]]}}]}"#,
    )?;
    let p = node.wait_pod("p", "running once the config is fixed", T, |p| {
        running(p, "c")
    })?;
    ensure!(TestNode::pod_ip(&p).starts_with("10.66.0."));
    node.remove_manifest("p.yaml");
    node.wait_gone("p", T)?;
    node.assert_clean()
}

#[test]
fn an_exhausted_pool_fails_the_pod_with_a_reason_and_leaks_nothing() -> Result<()> {
    // A /30 has one address for pods besides the gateway.
    let node = node_with_agent("node1", "podCIDR: 10.99.0.0/30\n")?;
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '3600']}}\n")
    };
    node.write_manifest("first.yaml", &pod("first"));
    node.wait_pod("first", "running", T, |p| running(p, "c"))?;
    node.write_manifest("second.yaml", &pod("second"));
    let second = node.wait_pod("second", "out of addresses", T, |p| {
        TestNode::container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| {
                m.contains("no IP addresses available in range set: 10.99.0.1-10.99.0.2")
            })
    })?;
    ensure!(second["status"]["podIP"].is_null());
    node.remove_manifest("first.yaml");
    node.wait_gone("first", T)?;
    let second = node.wait_pod("second", "running once an address is free", T, |p| {
        running(p, "c")
    })?;
    ensure!(TestNode::pod_ip(&second) == "10.99.0.2");
    node.remove_manifest("second.yaml");
    node.wait_gone("second", T)?;
    node.assert_clean()
}
