//! SPDY/3.1 frames and their zlib-compressed header blocks, as a client of exec, attach and
//! port-forward sends them: read until the stream ends or is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut frames = nodelet::kubelet::spdy::FrameReader::new(data);
        for _ in 0..1024 {
            match frames.next().await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    });
});
