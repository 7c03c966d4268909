//! `nodelet`: a kubelet-style node agent. With no subcommand it runs the agent; the subcommands act
//! on the same node state. Pods' shims are the separate, single-threaded `nodelet-shim` binary,
//! so nothing forks from the agent's multi-threaded runtime (DESIGN.md decision 1).

use nodelet::{apiserver, cli, config, node};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Stop every pod gracefully and remove the node's state, pod network and cgroups (the
    /// agent must be stopped; images, manifests and configuration stay)
    Reset,
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
    // A store named outright needs no configuration (the agent runs this check on its own
    // store, whatever configuration file it was given).
    if let Some(Command::CheckStore {
        database: Some(path),
    }) = &cli.command
    {
        return finish(check_store(path));
    }
    let result = config::Config::load(&cli.flags)
        .map_err(anyhow::Error::from)
        .and_then(|config| match &cli.command {
            None => {
                init_tracing();
                // Before the runtime's threads: it takes systemd's variables out of the
                // environment.
                let notifier = nodelet::systemd::Notifier::from_env();
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?
                    .block_on(node::run(config, notifier))
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
            Some(Command::Reset) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(nodelet::reset::reset(config)),
            Some(Command::CheckStore { database }) => check_store(
                &database
                    .clone()
                    .unwrap_or_else(|| config.root_dir.join("api.db")),
            ),
        });
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_store(path: &std::path::Path) -> anyhow::Result<()> {
    let (objects, rv) = apiserver::Store::check(path)?;
    println!(
        "{}: {objects} objects, resourceVersion {rv}",
        path.display()
    );
    Ok(())
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
