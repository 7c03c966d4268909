//! `grpc-health PORT`: a tiny gRPC server of the standard health-checking protocol
//! (`grpc.health.v1.Health/Check`) for the probe tests, shipped in the test image
//! `grpc-health`. It answers SERVING while /tmp/serving exists and NOT_SERVING otherwise, for the
//! service "" or "nodelet"; other services are NOT_FOUND, as grpc-go's health server answers.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9090);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        eprintln!("grpc-health listening on {port}");
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(check);
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    })
}

/// The service named in a HealthCheckRequest (field 1, a string), "" when absent.
fn service(message: &[u8]) -> String {
    match message {
        [0x0a, len, rest @ ..] if rest.len() >= *len as usize => {
            String::from_utf8_lossy(&rest[..*len as usize]).into_owned()
        }
        _ => String::new(),
    }
}

async fn check(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let grpc = |status: u32, message: &str, payload: Vec<u8>| {
        let mut response = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", status.to_string());
        if !message.is_empty() {
            response = response.header("grpc-message", message);
        }
        response
            .body(Full::new(Bytes::from(payload)))
            .expect("response")
    };
    if path != "/grpc.health.v1.Health/Check" {
        return Ok(grpc(12, "unknown method", Vec::new()));
    }
    let name = service(body.get(5..).unwrap_or_default());
    if !name.is_empty() && name != "nodelet" {
        return Ok(grpc(5, "unknown service", Vec::new()));
    }
    let status = if std::path::Path::new("/tmp/serving").exists() {
        1
    } else {
        2
    };
    // HealthCheckResponse { status = 1 } in a gRPC frame.
    let message = [0x08, status];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Ok(grpc(0, "", frame))
}
