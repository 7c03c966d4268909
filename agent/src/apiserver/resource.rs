//! The resource types the built-in API serves, with their names as discovery reports them.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    Namespaces,
    Nodes,
    Events,
    Leases,
    Secrets,
    ConfigMaps,
    ServiceAccounts,
    Services,
}

pub const COORDINATION: &str = "coordination.k8s.io/v1";

impl Resource {
    pub const ALL: [Resource; 9] = [
        Resource::Pods,
        Resource::Namespaces,
        Resource::Nodes,
        Resource::Events,
        Resource::Leases,
        Resource::Secrets,
        Resource::ConfigMaps,
        Resource::ServiceAccounts,
        Resource::Services,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::Nodes => "nodes",
            Resource::Events => "events",
            Resource::Leases => "leases",
            Resource::Secrets => "secrets",
            Resource::ConfigMaps => "configmaps",
            Resource::ServiceAccounts => "serviceaccounts",
            Resource::Services => "services",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::Nodes => "Node",
            Resource::Events => "Event",
            Resource::Leases => "Lease",
            Resource::Secrets => "Secret",
            Resource::ConfigMaps => "ConfigMap",
            Resource::ServiceAccounts => "ServiceAccount",
            Resource::Services => "Service",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Leases => COORDINATION,
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespaces | Resource::Nodes)
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &["po"],
            Resource::Namespaces => &["ns"],
            Resource::Nodes => &["no"],
            Resource::Events => &["ev"],
            Resource::ConfigMaps => &["cm"],
            Resource::ServiceAccounts => &["sa"],
            Resource::Services => &["svc"],
            Resource::Leases | Resource::Secrets => &[],
        }
    }

    /// Subresources and their verbs, as discovery lists them.
    pub fn subresources(self) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        match self {
            Resource::Pods => &[
                ("attach", "PodAttachOptions", &["create", "get"]),
                ("ephemeralcontainers", "Pod", &["get", "patch", "update"]),
                ("exec", "PodExecOptions", &["create", "get"]),
                ("log", "Pod", &["get"]),
                ("portforward", "PodPortForwardOptions", &["create", "get"]),
                ("status", "Pod", &["get", "patch", "update"]),
            ],
            Resource::Namespaces => &[
                ("finalize", "Namespace", &["update"]),
                ("status", "Namespace", &["get", "patch", "update"]),
            ],
            Resource::Nodes => &[("status", "Node", &["get", "patch", "update"])],
            Resource::ServiceAccounts => &[("token", "TokenRequest", &["create"])],
            Resource::Events
            | Resource::Leases
            | Resource::Secrets
            | Resource::ConfigMaps
            | Resource::Services => &[],
        }
    }

    /// The resource named by a URL's group/version and plural.
    pub fn from_path(group_version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    /// Field labels usable in a field selector, besides `metadata.name` and `metadata.namespace`.
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Resource::Namespaces => &["status.phase"],
            Resource::Nodes => &["spec.unschedulable"],
            Resource::Events => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Resource::Leases
            | Resource::Secrets
            | Resource::ConfigMaps
            | Resource::ServiceAccounts
            | Resource::Services => &[],
        }
    }
}
