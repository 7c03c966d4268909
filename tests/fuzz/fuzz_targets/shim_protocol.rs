//! The shim protocol's JSON lines, both ways.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nodelet_sandbox::protocol::{read_message, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = read_message::<Request>(&mut &data[..]);
    let _ = read_message::<Response>(&mut &data[..]);
});
