//! The shim is linked as a position-dependent executable: a PIE's relocated read-only data
//! (vtables, tables of pointers, 60 KiB) is written at every start, and so private to each of
//! the node's shims, a third of a pod's memory; at a fixed address those pages are the file's,
//! shared by every shim. (containerd's shim, a Go binary, is position-dependent too.)
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bin=nodelet-shim=-no-pie");
    }
}
