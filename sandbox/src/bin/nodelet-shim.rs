//! `nodelet-shim`: the per-pod monitor, a binary of its own so that each pod costs only what the
//! shim itself needs (about 1.7 MiB RSS, against 3.6 MiB when it was the agent's own binary
//! re-executed: the agent's relocated data and code pages are not the shim's to carry).
//!
//! `nodelet-shim DIR` starts a pod's shim from `DIR/config.json` and exits once it serves (or with
//! its error on stderr); `nodelet-shim reaper` is the init of a PID namespace that only reaps;
//! `nodelet-shim exec SPEC_JSON` starts a process in a running container (`kubectl exec`).
//! It never starts a thread, so forking in it is sound (DESIGN.md decision 1).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("reaper") if args.len() == 2 => {
            // Dies with whoever started it (a test node's unshare), and so does its whole PID
            // namespace: what `unshare --kill-child` would do, without its noise.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            nodelet_sandbox::shim::reap_until_terminated()
        }
        Some("exec") if args.len() == 3 => {
            let spec = args[2].to_str().and_then(|s| serde_json::from_str(s).ok());
            match spec {
                Some(spec) => ExitCode::from(nodelet_sandbox::exec::main(&spec) as u8),
                None => {
                    eprintln!("nodelet-shim exec: the spec is not valid JSON");
                    ExitCode::from(2)
                }
            }
        }
        Some(_) if args.len() == 2 => {
            nodelet_sandbox::shim::LineLogger::install(tracing::Level::INFO);
            ExitCode::from(nodelet_sandbox::shim::main(std::path::Path::new(&args[1])) as u8)
        }
        _ => {
            eprintln!(
                "usage: nodelet-shim POD_DIR | nodelet-shim reaper | nodelet-shim exec SPEC_JSON"
            );
            ExitCode::from(2)
        }
    }
}
