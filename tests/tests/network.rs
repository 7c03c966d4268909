//! The pod network in test nodes: an address per pod, real source addresses between pods on one
//! node and across nodes (host-gw routes over a veth "underlay" between two test nodes), bad
//! CNI configuration, address exhaustion, and nothing left behind.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nodelet_tests::{run_cni, sleeper_pod, wait_for, TestNode};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A server that answers with the address the request came from.
const ECHO_SERVER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: s\n    image: luksa/kubia\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'mkdir -p /w/cgi-bin && printf \"#!/bin/sh\\nprintf \\\"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\\\"\\necho from \\$REMOTE_ADDR\\n\" > /w/cgi-bin/index.cgi && chmod +x /w/cgi-bin/index.cgi && exec httpd -f -p 8080 -h /w']\n";

fn client(name: &str, target: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'until wget -qO- http://{target}:8080/; do sleep 0.2; done; sleep 3600']\n"
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

/// Starts the echo server on `server_node` and, once it has an IP, a client on `client_node`
/// that asks it; returns both pods and the address the server saw the request come from.
fn round_trip(server_node: &TestNode, client_node: &TestNode) -> Result<(Value, Value, String)> {
    server_node.write_manifest("server.yaml", ECHO_SERVER);
    let server = server_node.wait_pod("server", "running with an IP", T, |p| {
        TestNode::running(p, "s") && !TestNode::pod_ip(p).is_empty()
    })?;
    client_node.write_manifest("client.yaml", &client("client", &TestNode::pod_ip(&server)));
    let client = client_node.wait_pod("client", "running with an IP", T, |p| {
        TestNode::running(p, "c") && !TestNode::pod_ip(p).is_empty()
    })?;
    let seen = wait_for("the server's answer", T, || {
        let l = client_node.logs("client", "c");
        l.contains("from ").then_some(l)
    })?;
    Ok((server, client, seen_from(&seen)))
}

fn node_with_agent(name: &str, extra: &str) -> Result<TestNode> {
    let mut node = TestNode::with_config(name, extra)?;
    node.start_agent()?;
    Ok(node)
}

#[test]
fn pods_get_their_own_address_and_see_each_others_real_one() -> Result<()> {
    let node = node_with_agent("node1", "")?;
    let (server, client, seen) = round_trip(&node, &node)?;
    let server_ip = TestNode::pod_ip(&server);
    ensure!(
        server_ip.starts_with("10.244.0."),
        "default pod CIDR: {server_ip}"
    );
    let client_ip = TestNode::pod_ip(&client);
    ensure!(client_ip != server_ip);
    ensure!(
        seen == client_ip,
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

    let (server, client, seen) = round_trip(&b, &a)?;
    let server_ip = TestNode::pod_ip(&server);
    ensure!(server_ip.starts_with("10.244.2."), "{server_ip}");
    ensure!(server["status"]["hostIP"] == "192.168.77.2");
    let client_ip = TestNode::pod_ip(&client);
    ensure!(client_ip.starts_with("10.244.1."), "{client_ip}");
    ensure!(seen == client_ip, "flat network: {seen:?}");

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
    node.write_manifest("p.yaml", &sleeper_pod("p"));
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
        TestNode::running(p, "c")
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
    let pod = sleeper_pod;
    node.write_manifest("first.yaml", &pod("first"));
    node.wait_pod("first", "running", T, |p| TestNode::running(p, "c"))?;
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
        TestNode::running(p, "c")
    })?;
    ensure!(TestNode::pod_ip(&second) == "10.99.0.2");
    node.remove_manifest("second.yaml");
    node.wait_gone("second", T)?;
    node.assert_clean()
}

#[test]
fn other_plugin_chains_run_as_cni_binaries() -> Result<()> {
    let node = TestNode::with_config("node1", "cniBinDirs: [/usr/lib/cni]\n")?;
    let conf_dir = node.dir.join("cni/net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let chain = format!(
        r#"{{"cniVersion":"1.0.0","name":"chain","plugins":[
          {{"type":"bridge","bridge":"cbr0","isGateway":true,"hairpinMode":true,
           "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.55.0.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}},
          {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
        node.dir.join("cni/data/networks").display()
    );
    std::fs::write(conf_dir.join("10-chain.conflist"), &chain)?;
    let mut node = node;
    node.start_agent()?;
    let (server, client_pod, seen) = round_trip(&node, &node)?;
    let server_ip = TestNode::pod_ip(&server);
    ensure!(server_ip.starts_with("10.55.0."), "{server_ip}");
    ensure!(seen == TestNode::pod_ip(&client_pod));
    let uid = client_pod["metadata"]["uid"].as_str().unwrap_or_default();
    let cache: Value = serde_json::from_slice(&std::fs::read(
        node.dir
            .join("cni/data/results")
            .join(format!("chain-{uid}-eth0")),
    )?)?;
    ensure!(
        cache["kind"] == "cniCacheV1"
            && cache["networkName"] == "chain"
            && cache["ifName"] == "eth0"
    );

    // A missing plugin: the pod waits with the reason, the others are untouched.
    std::fs::write(
        conf_dir.join("10-chain.conflist"),
        r#"{"cniVersion":"1.0.0","name":"chain","plugins":[{"type":"nosuch"}]}"#,
    )?;
    node.stop_agent(nix::sys::signal::Signal::SIGTERM)?;
    node.start_agent()?;
    node.write_manifest("third.yaml", &client("third", &server_ip));
    node.wait_pod("third", "missing plugin", T, |p| {
        TestNode::container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("failed to find plugin \"nosuch\" in path /usr/lib/cni"))
    })?;
    ensure!(TestNode::running(&node.pod("server").unwrap(), "s"));
    // Deleting the first pods still needs their own chain's DEL: put the configuration back.
    node.remove_manifest("third.yaml");
    node.wait_gone("third", T)?;
    node.stop_agent(nix::sys::signal::Signal::SIGTERM)?;
    std::fs::write(conf_dir.join("10-chain.conflist"), &chain)?;
    node.start_agent()?;
    node.wait_pod("server", "re-adopted", T, |p| TestNode::running(p, "s"))?;
    node.remove_manifest("client.yaml");
    node.remove_manifest("server.yaml");
    node.wait_gone("client", T)?;
    node.wait_gone("server", T)?;
    ensure!(
        std::fs::read_dir(node.dir.join("cni/data/results"))?.count() == 0,
        "result cache removed; agent log:\n{}",
        node.agent_log()
    );
    node.assert_clean()
}

/// `ip -j` inside the node, in the network namespace at `netns` (a path) or the node's own.
fn ip_json(node: &TestNode, netns: Option<&str>, args: &[&str]) -> Result<Vec<Value>> {
    let mut cmd = node.command("nsenter");
    if let Some(ns) = netns {
        cmd.arg(format!("--net={ns}"));
    }
    let out = cmd.args(["--", "ip", "-j"]).args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn native_wiring_matches_the_reference_bridge_plugin_and_shares_its_store() -> Result<()> {
    let node = node_with_agent("node1", "")?;
    node.write_manifest("p.yaml", &sleeper_pod("p"));
    let pod = node.wait_pod("p", "running", T, |p| TestNode::running(p, "c"))?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let native_ns = format!("{}/run/pods/{uid}/ns/net", node.dir.display());

    // The reference plugin, on the same conflist and the same host-local directory.
    let plugin = node.cni_plugin_config("10-nodelet.conflist")?;
    let holder = node.netns_holder()?;
    let ref_ns = holder.node_path();
    let run_plugin = |op: &str| {
        run_cni(
            node.command("/usr/lib/cni/bridge"),
            op,
            "reference0",
            &ref_ns,
            &plugin,
        )
    };
    let out = run_plugin("ADD")?;
    let result: Value = serde_json::from_slice(&out.stdout)?;
    let ref_ip = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        !ref_ip.starts_with(&format!("{}/", TestNode::pod_ip(&pod))),
        "no collision in the shared store"
    );

    // Pod side: eth0 up with the address and prefix, default route via the gateway, protocol boot.
    let pod_view = |ns: &str| -> Result<(Value, Value)> {
        let addrs = ip_json(&node, Some(ns), &["addr", "show", "eth0"])?;
        let routes = ip_json(&node, Some(ns), &["route", "show", "default"])?;
        let a = &addrs[0];
        let v4 = a["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["family"] == "inet")
            .cloned()
            .unwrap_or_default();
        Ok((
            serde_json::json!({"flags": a["flags"], "mtu": a["mtu"], "prefixlen": v4["prefixlen"], "scope": v4["scope"], "broadcast_set": v4["broadcast"].is_string()}),
            serde_json::json!({"gateway": routes[0]["gateway"], "protocol": routes[0]["protocol"], "dev": routes[0]["dev"]}),
        ))
    };
    let (native_if, native_route) = pod_view(&native_ns)?;
    let (ref_if, ref_route) = pod_view(&ref_ns)?;
    ensure!(
        native_if == ref_if,
        "eth0: native {native_if} vs reference {ref_if}"
    );
    ensure!(
        native_route == ref_route,
        "route: native {native_route} vs reference {ref_route}"
    );

    // Host side: both veths are ports of cni0 with hairpin on, up, same MTU.
    // Both host ends converge to UP (the kernel's link watch reports operstate asynchronously).
    let links = wait_for("both host veths up", T, || {
        let links = ip_json(&node, None, &["-d", "link", "show", "type", "veth"]).ok()?;
        links
            .iter()
            .all(|l| l["operstate"] == "UP")
            .then_some(links)
    })
    .with_context(|| {
        format!(
            "{:#?}",
            ip_json(&node, None, &["-d", "link", "show", "type", "veth"])
        )
    })?;
    ensure!(links.len() == 2, "{links:#?}");
    let port = |l: &Value| serde_json::json!({"master": l["master"], "mtu": l["mtu"], "operstate": l["operstate"], "hairpin": l["linkinfo"]["info_slave_data"]["hairpin"], "kind": l["linkinfo"]["info_slave_kind"]});
    ensure!(
        port(&links[0]) == port(&links[1]),
        "{} vs {}",
        port(&links[0]),
        port(&links[1])
    );
    ensure!(port(&links[0])["hairpin"] == true && port(&links[0])["master"] == "cni0");

    run_plugin("DEL")?;
    drop(holder);
    node.remove_manifest("p.yaml");
    node.wait_gone("p", T)?;
    node.assert_clean()
}

#[test]
fn ip_masq_true_adds_a_masquerade_rule_per_pod_and_removes_it() -> Result<()> {
    let node = TestNode::new()?;
    let conf_dir = node.dir.join("cni/net.d");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::write(
        conf_dir.join("10-masq.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"masq","plugins":[{{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,
              "ipam":{{"type":"host-local","subnet":"10.77.0.0/24","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}]}}"#,
            node.dir.join("cni/data/networks").display()
        ),
    )?;
    let mut node = node;
    node.start_agent()?;
    node.write_manifest("p.yaml", &sleeper_pod("p"));
    let pod = node.wait_pod("p", "running", T, |p| TestNode::running(p, "c"))?;
    // The chosen file is said, and so is the masquerade, once per load.
    let log = node.agent_log();
    ensure!(
        log.contains("10-masq.conflist") && log.contains("network=masq"),
        "{log}"
    );
    ensure!(log.contains("this CNI network masquerades"), "{log}");
    let ip = TestNode::pod_ip(&pod);
    let ruleset = String::from_utf8(
        node.command("nft")
            .args(["list", "ruleset"])
            .output()?
            .stdout,
    )?;
    ensure!(
        ruleset.contains(&format!(
            "ip saddr {ip} ip daddr != 10.77.0.0/24 ip daddr != 224.0.0.0/4 masquerade"
        )),
        "{ruleset}"
    );
    node.remove_manifest("p.yaml");
    node.wait_gone("p", T)?;
    let ruleset = String::from_utf8(
        node.command("nft")
            .args(["list", "ruleset"])
            .output()?
            .stdout,
    )?;
    ensure!(
        !ruleset.contains(" masquerade comment"),
        "rule removed: {ruleset}"
    );
    node.assert_clean()
}

#[test]
fn a_restarted_agent_keeps_pod_addresses_and_frees_those_of_vanished_pods() -> Result<()> {
    let mut node = node_with_agent("node1", "")?;
    let pod = sleeper_pod;
    node.write_manifest("keep.yaml", &pod("keep"));
    let before = node.wait_pod("keep", "running", T, |p| {
        TestNode::running(p, "c") && !TestNode::pod_ip(p).is_empty()
    })?;
    node.stop_agent(nix::sys::signal::Signal::SIGKILL)?;
    // An address held by a pod that no longer exists (a crash between allocation and record).
    let networks = node.dir.join("cni/data/networks/nodelet");
    std::fs::write(networks.join("10.244.0.200"), "0000deadbeef0000\r\neth0")?;
    node.start_agent()?;
    let after = node.wait_pod("keep", "re-adopted", T, |p| TestNode::running(p, "c"))?;
    ensure!(TestNode::pod_ip(&after) == TestNode::pod_ip(&before));
    ensure!(
        !networks.join("10.244.0.200").exists(),
        "stale allocation released at start"
    );
    node.remove_manifest("keep.yaml");
    node.wait_gone("keep", T)?;
    node.assert_clean()
}

const ROUNDS: usize = 100;

/// 1,000 pods created and deleted, ten at a time: no veth, address or route may stay behind.
#[test]
fn a_thousand_create_delete_cycles_leave_nothing_behind() -> Result<()> {
    // Static pods only: the network's own work, without mirror pods in an API.
    let node = node_with_agent("node1", "apiServer: {enabled: false}\nport: 0\n")?;
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n")
    };
    let names: Vec<String> = (0..10).map(|i| format!("cycle{i}")).collect();
    let mut routes_before = None;
    for round in 0..ROUNDS {
        for name in &names {
            node.write_manifest(&format!("{name}.yaml"), &pod(name));
        }
        for name in &names {
            node.wait_pod(name, &format!("running in round {round}"), T, |p| {
                TestNode::running(p, "c")
            })?;
        }
        for name in &names {
            node.remove_manifest(&format!("{name}.yaml"));
        }
        for name in &names {
            node.wait_gone(name, T)?;
        }
        // The bridge and its subnet route stay (as with the plugin); nothing else may pile up.
        // ("linkdown" comes and goes with the bridge's carrier, as ports come and go.)
        let routes =
            String::from_utf8(node.command("ip").args(["route", "show"]).output()?.stdout)?
                .replace(" linkdown", "");
        ensure!(
            *routes_before.get_or_insert_with(|| routes.clone()) == routes,
            "routes changed in round {round}"
        );
    }
    node.assert_clean()
}
