//! The agent's own metrics, under kubelet's and kube-apiserver's names where they have one:
//! the kubelet port's `/metrics` and the built-in API's `/metrics` (the `prometheus` crate
//! keeps the registry and writes the text format kubelet serves).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// kubelet's buckets for pod start, with the sub-second ones a pod here takes in front.
const POD_START_BUCKETS: [f64; 30] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0,
    60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// kubelet's buckets for image pulls.
const PULL_BUCKETS: [f64; 17] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0,
];

/// kube-apiserver's buckets for request latency.
const REQUEST_BUCKETS: [f64; 21] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0,
];

pub struct Kubelet {
    registry: Registry,
    pub pod_start: Histogram,
    pub image_pull: HistogramVec,
    pub running_pods: IntGauge,
    pub running_containers: IntGaugeVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
}

pub struct ApiServer {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("histogram")
}

pub static KUBELET: LazyLock<Kubelet> = LazyLock::new(|| {
    let m = Kubelet {
        registry: Registry::new(),
        pod_start: Histogram::with_opts(
            HistogramOpts::new(
                "kubelet_pod_start_duration_seconds",
                "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            )
            .buckets(POD_START_BUCKETS.to_vec()),
        )
        .expect("histogram"),
        image_pull: histogram(
            "kubelet_image_pull_duration_seconds",
            "Duration in seconds to pull an image.",
            &["image_size_in_bytes"],
            &PULL_BUCKETS,
        ),
        running_pods: IntGauge::new(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
        )
        .expect("gauge"),
        running_containers: IntGaugeVec::new(
            Opts::new(
                "kubelet_running_containers",
                "Number of containers currently running",
            ),
            &["container_state"],
        )
        .expect("gauge"),
        http_requests: IntCounterVec::new(
            Opts::new(
                "kubelet_http_requests_total",
                "Number of the http requests received since the server started",
            ),
            &["long_running", "method", "path", "server_type"],
        )
        .expect("counter"),
        http_duration: histogram(
            "kubelet_http_requests_duration_seconds",
            "Duration in seconds to serve http requests",
            &["long_running", "method", "path", "server_type"],
            &REQUEST_BUCKETS,
        ),
    };
    for c in [
        Box::new(m.pod_start.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.image_pull.clone()),
        Box::new(m.running_pods.clone()),
        Box::new(m.running_containers.clone()),
        Box::new(m.http_requests.clone()),
        Box::new(m.http_duration.clone()),
    ] {
        m.registry.register(c).expect("register");
    }
    m
});

pub static API_SERVER: LazyLock<ApiServer> = LazyLock::new(|| {
    let labels = [
        "verb",
        "group",
        "version",
        "resource",
        "subresource",
        "scope",
        "component",
    ];
    let m = ApiServer {
        registry: Registry::new(),
        requests: IntCounterVec::new(
            Opts::new(
                "apiserver_request_total",
                "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            ),
            &[labels.as_slice(), &["code"]].concat(),
        )
        .expect("counter"),
        duration: histogram(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            &labels,
            &REQUEST_BUCKETS,
        ),
    };
    m.registry
        .register(Box::new(m.requests.clone()))
        .expect("register");
    m.registry
        .register(Box::new(m.duration.clone()))
        .expect("register");
    m
});

fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encode metrics");
    String::from_utf8(out).expect("metrics are UTF-8")
}

impl Kubelet {
    pub fn text(&self) -> String {
        encode(&self.registry)
    }

    pub fn observe_pull(&self, took: Duration, size: u64) {
        self.image_pull
            .with_label_values(&[size_bucket(size)])
            .observe(took.as_secs_f64());
    }
}

impl ApiServer {
    pub fn text(&self) -> String {
        encode(&self.registry)
    }
}

/// kubelet's `image_size_in_bytes` label: the image's size as a range.
fn size_bucket(bytes: u64) -> &'static str {
    const MB: u64 = 1_000_000;
    const GB: u64 = 1_000 * MB;
    match bytes {
        b if b < 10 * MB => "0-10MB",
        b if b < 100 * MB => "10MB-100MB",
        b if b < 500 * MB => "100MB-500MB",
        b if b < GB => "500MB-1GB",
        b if b < 5 * GB => "1GB-5GB",
        b if b < 10 * GB => "5GB-10GB",
        b if b < 20 * GB => "10GB-20GB",
        b if b < 30 * GB => "20GB-30GB",
        b if b < 40 * GB => "30GB-40GB",
        b if b < 60 * GB => "40GB-60GB",
        b if b < 100 * GB => "60GB-100GB",
        _ => "GT100GB",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_names_in_the_text_format() {
        KUBELET.pod_start.observe(0.02);
        KUBELET.observe_pull(Duration::from_millis(700), 5_000_000);
        let text = KUBELET.text();
        assert!(text.contains("# TYPE kubelet_pod_start_duration_seconds histogram"));
        assert!(text.contains("kubelet_pod_start_duration_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains(
            "kubelet_image_pull_duration_seconds_count{image_size_in_bytes=\"0-10MB\"} 1"
        ));
        assert_eq!(size_bucket(2_000_000_000), "1GB-5GB");
    }
}
