//! `nodelet`: a kubelet-style node agent. With no subcommand it runs the agent; the subcommands act
//! on the same node state. Pods' shims are the separate, single-threaded `nodelet-shim` binary,
//! so nothing forks from the agent's multi-threaded runtime (DESIGN.md decision 1).

mod apiserver;
mod cli;
mod config;
mod https;
mod images;
mod kubelet;
mod network;
mod node;
mod paths;
mod pod;
mod runtime;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sha2::Digest as _;

#[derive(Parser)]
#[command(
    name = "nodelet",
    version,
    about = "A kubelet-style node agent that runs real pod sandboxes"
)]
struct Cli {
    #[command(flatten)]
    flags: config::Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage images in the node's image store
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// List images in the node's image store
    Images,
    /// List the pods of the running agent
    Pods {
        /// Only this namespace
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print a container's logs
    Logs(cli::LogsArgs),
    /// Read the built-in API's store through and report damage (`<rootDir>/api.db` by default)
    CheckStore {
        /// The store file
        database: Option<PathBuf>,
    },
    /// Run the installed kubectl against this node's API (its kubeconfig)
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Store an image from an OCI image layout directory or an OCI archive (tar)
    Import {
        source: PathBuf,
        /// Name to store it under (default: the layout's reference annotation)
        reference: Option<String>,
    },
    /// Pull an image from its registry into the node's store (credentials and plain-HTTP rules
    /// as for pods)
    Pull { reference: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = config::Config::load(&cli.flags)
        .map_err(anyhow::Error::from)
        .and_then(|config| match &cli.command {
            None => {
                init_tracing();
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?
                    .block_on(node::run(config))
            }
            Some(Command::Image {
                command: ImageCommand::Import { source, reference },
            }) => cli::import(&config, source, reference.as_deref()),
            Some(Command::Image {
                command: ImageCommand::Pull { reference },
            }) => {
                // The pull's progress lines, as the agent logs them.
                init_tracing();
                cli::pull(&config, reference)
            }
            Some(Command::Images) => cli::images(&config),
            Some(Command::Pods { namespace }) => cli::pods(&config, namespace.as_deref()),
            Some(Command::Logs(args)) => cli::logs(&config, args),
            Some(Command::Kubectl { args }) => cli::kubectl(&config, args),
            Some(Command::CheckStore { database }) => {
                let path = database
                    .clone()
                    .unwrap_or_else(|| config.root_dir.join("api.db"));
                let (objects, rv) = apiserver::Store::check(&path)?;
                println!(
                    "{}: {objects} objects, resourceVersion {rv}",
                    path.display()
                );
                Ok(())
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODELET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Random hex (ids, temporary names) from the kernel's generator.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// 16 hex characters of sha256: names derived from content (UIDs, backoff keys).
pub fn short_hash(data: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(data)[..8])
}

/// Writes a file readable by its owner only (it may hold Secrets: env values, tokens, keys),
/// atomically: a reader, or the next agent after a crash, sees the old or the new content,
/// never half of it (ext4 flushes a file renamed over another before the rename, auto_da_alloc).
pub fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, path)
}

/// An error with its whole source chain, for one log line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    nodelet_sandbox::shim::error_chain(err)
}
