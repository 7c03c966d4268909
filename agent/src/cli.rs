//! The operator commands that act on a node's state: `pods`, `logs`, `images`, `image import`.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use nodelet_sandbox::logs::parse_record;

use crate::config::Config;
use crate::images::ImageStore;
use crate::node::{ControlRequest, PodList};
use crate::paths::NodePaths;
use crate::pod::table;

/// Asks the running agent for its pods.
pub fn fetch_pods(paths: &NodePaths) -> anyhow::Result<Vec<Pod>> {
    let socket = paths.control_socket();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach nodelet at {} (is the agent running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    nodelet_sandbox::protocol::write_message(&mut stream, &ControlRequest::Pods)?;
    let list: PodList = nodelet_sandbox::protocol::read_message(&mut BufReader::new(stream))?
        .ok_or_else(|| anyhow!("nodelet closed the connection"))?;
    Ok(list.items)
}

pub fn pods(config: &Config, namespace: Option<&str>) -> anyhow::Result<()> {
    let mut pods = fetch_pods(&NodePaths::new(config))?;
    pods.retain(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)));
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            let r = table::pod_row(p, now);
            vec![
                r.namespace,
                r.name,
                r.ready,
                r.status,
                r.restarts,
                r.age,
                r.ip,
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No resources found");
        return Ok(());
    }
    print!(
        "{}",
        table::render(
            &[
                "NAMESPACE",
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "IP"
            ],
            &rows
        )
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Pod name
    pub pod: String,
    /// Container name (required when the pod has more than one)
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Keep printing as the container writes, until it stops
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous instance's logs
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Prefix each line with its timestamp
    #[arg(long)]
    pub timestamps: bool,
}

pub fn logs(config: &Config, args: &LogsArgs) -> anyhow::Result<()> {
    let paths = NodePaths::new(config);
    let find = |pods: Vec<Pod>| {
        pods.into_iter().find(|p| {
            p.metadata.name.as_deref() == Some(&args.pod)
                && p.metadata.namespace.as_deref() == Some(&args.namespace)
        })
    };
    let pod = find(fetch_pods(&paths)?).ok_or_else(|| {
        anyhow!(
            "pods \"{}\" not found in namespace {}",
            args.pod,
            args.namespace
        )
    })?;
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .map(|c| c.name.clone())
        })
        .collect();
    let container = match (&args.container, names.as_slice()) {
        (Some(c), _) if names.contains(c) => c.clone(),
        (Some(c), _) => bail!("container {c} is not valid for pod {}", args.pod),
        (None, [only]) => only.clone(),
        (None, []) => bail!("pod {} has no containers", args.pod),
        // As kubectl: the container the pod's annotation names, else the first, and say so.
        (None, [first, ..]) => {
            let annotated = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
                .filter(|c| names.contains(c));
            let chosen = annotated.unwrap_or(first).clone();
            eprintln!(
                "Defaulted container \"{chosen}\" out of: {}",
                names.join(", ")
            );
            chosen
        }
    };
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .cloned()
        .unwrap_or_default();
    let attempt = if args.previous {
        if status
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_none()
        {
            bail!(
                "previous terminated container \"{container}\" in pod \"{}\" not found",
                args.pod
            );
        }
        status.restart_count - 1
    } else {
        status.restart_count
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let file = paths.container_log(
        &args.namespace,
        &args.pod,
        &uid,
        &container,
        attempt.max(0) as u32,
    );
    let mut out = std::io::stdout().lock();
    let still_running = || {
        fetch_pods(&paths).ok().and_then(find).is_some_and(|p| {
            p.status
                .and_then(|s| s.container_statuses)
                .and_then(|cs| cs.into_iter().find(|c| c.name == container))
                .is_some_and(|c| {
                    c.restart_count == attempt && c.state.is_some_and(|s| s.running.is_some())
                })
        })
    };
    print_log(
        &file,
        args.timestamps,
        args.follow && !args.previous,
        &mut out,
        still_running,
    )
}

/// Prints the content of a CRI log, partial records joined; with `follow`, keeps reading until
/// `running()` says the container stopped.
fn print_log(
    path: &Path,
    timestamps: bool,
    follow: bool,
    out: &mut impl Write,
    running: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open log {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut idle = 0u32;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 && line.ends_with(b"\n") {
            idle = 0;
            if let Some(record) = parse_record(&line) {
                if timestamps {
                    write!(out, "{} ", record.timestamp)?;
                }
                out.write_all(record.content)?;
                if !record.partial {
                    out.write_all(b"\n")?;
                }
            }
            continue;
        }
        if n > 0 {
            // An unfinished record: read it again once the writer completes it.
            let pos = reader.stream_position()?;
            reader.seek(SeekFrom::Start(pos - n as u64))?;
        }
        if !follow {
            return Ok(());
        }
        out.flush()?;
        idle += 1;
        if idle.is_multiple_of(5) && !running() {
            // Drain what was written before the exit, then stop.
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            for l in rest.split_inclusive(|b| *b == b'\n') {
                if let Some(record) = parse_record(l) {
                    out.write_all(record.content)?;
                    if !record.partial {
                        out.write_all(b"\n")?;
                    }
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn images(config: &Config) -> anyhow::Result<()> {
    let store = ImageStore::open(NodePaths::new(config).images())?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for image in store.list()? {
        let short: String = image
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let size = format!("{:.1}MB", image.size as f64 / 1e6);
        let last_used = image
            .last_used
            .and_then(|t| t.elapsed().ok())
            .map(|age| {
                let age = crate::pod::table::human_duration(age.as_secs() as i64);
                format!("{age} ago")
            })
            .unwrap_or_else(|| "-".into());
        for name in image.names {
            rows.push(vec![name, short.clone(), size.clone(), last_used.clone()]);
        }
    }
    rows.sort();
    print!(
        "{}",
        table::render(&["IMAGE", "ID", "SIZE", "LAST USED"], &rows)
    );
    Ok(())
}

/// `nodelet image pull REF`: the pods' pull path, run by hand (the store's lock makes it safe
/// beside a running agent).
pub fn pull(config: &Config, reference: &str) -> anyhow::Result<()> {
    let store = ImageStore::open(NodePaths::new(config).images())?;
    let puller =
        crate::images::pull::Puller::new(store, crate::images::registry::Settings::new(config));
    let image = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(puller.pull(reference, &[]))?;
    println!("pulled {} ({})", image.reference, image.digest);
    Ok(())
}

pub fn import(config: &Config, source: &Path, reference: Option<&str>) -> anyhow::Result<()> {
    let store = ImageStore::open(NodePaths::new(config).images())?;
    for r in store.import(source, reference)? {
        println!("imported {r}");
    }
    Ok(())
}

/// `nodelet kubectl ...`: execs kubectl with the kubeconfig of the API this node uses (the
/// configured cluster's, or the built-in API's admin kubeconfig).
pub fn kubectl(config: &Config, args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let kubeconfig = config
        .kubeconfig
        .clone()
        .unwrap_or_else(|| config.api_server.kubeconfig.clone());
    if !kubeconfig.exists() {
        anyhow::bail!(
            "{} does not exist: is the agent running with its built-in API (apiServer.enabled)?",
            kubeconfig.display()
        );
    }
    let err = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(args)
        .exec();
    Err(anyhow::anyhow!("run kubectl: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_are_joined_and_unfinished_ones_wait() {
        let path = std::env::temp_dir().join(format!("nodelet-cli-log-{}", std::process::id()));
        std::fs::write(
            &path,
            "2026-01-01T00:00:00Z stdout P hel\n2026-01-01T00:00:00Z stdout F lo\n2026-01-01T00:00:01Z stderr F oops\n2026-01-01T00:00:02Z stdout F unfin",
        )
        .unwrap();
        let mut out = Vec::new();
        print_log(&path, false, false, &mut out, || false).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "hello\noops\n");
        let mut out = Vec::new();
        print_log(&path, true, false, &mut out, || false).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("2026-01-01T00:00:00Z hel"));
        std::fs::remove_file(&path).unwrap();
    }
}
