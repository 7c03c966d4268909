//! Service accounts as kube-apiserver and kube-controller-manager serve them: a `default` one in
//! every namespace, the `kube-root-ca.crt` ConfigMap, the ServiceAccount admission plugin (the
//! name defaulted and checked, the `kube-api-access-*` projected volume), TokenRequest
//! (`kubectl create token`), and the authentication of the tokens it signs.
//!
//! Tokens are JWTs signed ES256 with `<rootDir>/pki/sa.key`, with kube-apiserver's claims
//! (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti` and `kubernetes.io` naming the namespace,
//! service account and bound pod; a pod's API access token is extended to a year, as
//! kube-apiserver extends it by default). A token is accepted while it has not expired, its
//! audience is the API's, and the service account (and the pod it is bound to) still exists with
//! the UID it names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{PKey, Private};
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::{self, name_of};
use super::resource::Resource;
use super::store::Store;

/// The issuer and the API's audience (kubeadm's defaults).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Where the token, CA and namespace are mounted (`DefaultAPITokenMountPath`).
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const ROOT_CA: &str = "kube-root-ca.crt";
const DEFAULT_EXPIRATION: i64 = 3600;
/// What the admission plugin asks for the pod's token (kubelet renews it at 80%).
const ACCESS_EXPIRATION: i64 = 3607;
/// What that token is extended to (`ExpirationExtensionSeconds`, a year).
const EXTENDED_EXPIRATION: i64 = 365 * 24 * 3600;

/// Who a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

pub struct Tokens {
    key: PKey<Private>,
    /// kube-apiserver's key id: the public key's DER, SHA-256, base64url (`keyIDFromPublicKey`).
    key_id: String,
}

impl Tokens {
    pub fn new(key: PKey<Private>) -> Tokens {
        let key_id = key
            .public_key_to_der()
            .and_then(|der| hash(MessageDigest::sha256(), &der))
            .map(|digest| B64.encode(digest))
            .unwrap_or_default();
        Tokens { key, key_id }
    }

    /// The OpenID Connect discovery document (`/.well-known/openid-configuration`), as
    /// kube-apiserver serves it for service account issuer discovery.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The key set tokens are verified with (`/openid/v1/jwks`, RFC 7517).
    pub fn jwks(&self) -> Value {
        json!({"keys": [public_jwk(&self.key, &self.key_id)]})
    }

    fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let failed = |e: openssl::error::ErrorStack| ApiError::internal(format!("sign token: {e}"));
        let header = B64.encode(json!({"alg": "ES256", "kid": self.key_id}).to_string());
        let payload = B64.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let digest = hash(MessageDigest::sha256(), input.as_bytes()).map_err(failed)?;
        let ec = self.key.ec_key().map_err(failed)?;
        let sig = EcdsaSig::sign(&digest, &ec).map_err(failed)?;
        let mut raw = sig.r().to_vec_padded(32).map_err(failed)?;
        raw.extend(sig.s().to_vec_padded(32).map_err(failed)?);
        Ok(format!("{input}.{}", B64.encode(raw)))
    }

    /// The claims of a token this API signed, if its signature and times are good.
    fn verify(&self, token: &str, now: i64) -> Option<Value> {
        let mut parts = token.split('.');
        let (header, payload, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let head: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
        if head["alg"] != "ES256" {
            return None;
        }
        let raw = B64.decode(sig).ok()?;
        if raw.len() != 64 {
            return None;
        }
        let (r, s) = raw.split_at(32);
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(r).ok()?,
            BigNum::from_slice(s).ok()?,
        )
        .ok()?;
        let input = format!("{header}.{payload}");
        let digest = hash(MessageDigest::sha256(), input.as_bytes()).ok()?;
        let key = self.key.ec_key().ok()?;
        if !sig.verify(&digest, &key).ok()? {
            return None;
        }
        let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let (exp, nbf) = (claims["exp"].as_i64()?, claims["nbf"].as_i64().unwrap_or(0));
        (claims["iss"] == ISSUER && now < exp && now >= nbf - 60).then_some(claims)
    }

    /// The service account a bearer token is, if it is a good token of this API for one of
    /// `audiences` and what it is bound to still exists.
    pub fn authenticate(&self, store: &Store, token: &str, audiences: &[&str]) -> Option<User> {
        let claims = self.verify(token, jiff::Timestamp::now().as_second())?;
        let aud: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => return None,
        };
        if !aud.iter().any(|a| audiences.contains(a)) {
            return None;
        }
        let k = &claims["kubernetes.io"];
        let namespace = k["namespace"].as_str()?;
        let (name, uid) = (
            k["serviceaccount"]["name"].as_str()?,
            k["serviceaccount"]["uid"].as_str()?,
        );
        let sa = store.get(Resource::ServiceAccounts, namespace, name)?;
        if sa["metadata"]["uid"] != uid || !sa["metadata"]["deletionTimestamp"].is_null() {
            return None;
        }
        if let Some(pod) = k["pod"].as_object() {
            let live = store.get(Resource::Pods, namespace, pod["name"].as_str()?)?;
            if live["metadata"]["uid"] != pod["uid"] {
                return None;
            }
        }
        Some(User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.to_owned(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        })
    }

    /// TokenRequest (`POST .../serviceaccounts/<name>/token`): kube-apiserver's checks, then a
    /// token for the service account, bound to the object the request names.
    pub fn request(
        &self,
        store: &Store,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        if body["kind"].as_str().is_some_and(|k| k != "TokenRequest") {
            return Err(ApiError::bad_request(format!(
                "expected a TokenRequest, got {}",
                body["kind"]
            )));
        }
        let sa = store
            .get(Resource::ServiceAccounts, namespace, name)
            .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
        if !sa["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::forbidden(
                "serviceaccounts",
                name,
                "the service account is being deleted",
            ));
        }
        let spec = &body["spec"];
        let invalid = |field: &str, why: String| {
            ApiError::invalid("TokenRequest", name, &[(field.to_owned(), why)])
        };
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION,
            v => v
                .as_i64()
                .ok_or_else(|| invalid("spec.expirationSeconds", format!("Invalid value: {v}")))?,
        };
        if expiration < 600 {
            return Err(invalid(
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if expiration > 1 << 32 {
            return Err(invalid("spec.expirationSeconds", format!("Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds")));
        }
        let mut audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if audiences.is_empty() {
            audiences.push(ISSUER.to_owned());
        }
        let now = jiff::Timestamp::now().as_second();
        let mut k = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
        });
        let bound = &spec["boundObjectRef"];
        if bound.is_object() {
            let kind = bound["kind"].as_str().unwrap_or_default();
            if kind != "Pod" {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    format!("Unsupported value: {kind:?}: supported values: \"Pod\""),
                ));
            }
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let pod = store
                .get(Resource::Pods, namespace, pod_name)
                .ok_or_else(|| ApiError::not_found("pods", pod_name))?;
            let runs_as = pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            if runs_as != name {
                return Err(ApiError::bad_request(format!("cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name.")));
            }
            let uid = &pod["metadata"]["uid"];
            if bound["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && *uid != u)
            {
                return Err(ApiError::conflict("pods", pod_name, &format!("the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated", bound["uid"].as_str().unwrap_or_default())));
            }
            k["pod"] = json!({"name": pod_name, "uid": uid});
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                if let Some(n) = store.get(Resource::Nodes, "", node) {
                    k["node"] = json!({"name": node, "uid": n["metadata"]["uid"]});
                }
            }
        }
        // kube-apiserver's --service-account-extend-token-expiration (on by default): the
        // token kubelet asks for a pod's API access (3607 s, the API's audience) is valid for a
        // year, so clients that never reread it keep working; its `warnafter` is the time asked
        // for, and the status still says that time, which kubelet renews at.
        let mut exp = now + expiration;
        if expiration == ACCESS_EXPIRATION
            && k.get("pod").is_some()
            && audiences.iter().all(|a| a == ISSUER)
        {
            k["warnafter"] = json!(exp);
            exp = now + EXTENDED_EXPIRATION;
        }
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "iss": ISSUER,
            "jti": objects::new_uid(),
            "kubernetes.io": k,
            "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        let token = self.sign(&claims)?;
        let expires = jiff::Timestamp::from_second(now + expiration).unwrap_or_default();
        let mut spec = spec.clone();
        spec["audiences"] = json!(audiences);
        spec["expirationSeconds"] = json!(expiration);
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires.to_string()},
        }))
    }
}

/// The P-256 public key as a JWK: its affine coordinates, base64url, padded to 32 bytes.
fn public_jwk(key: &PKey<Private>, key_id: &str) -> Value {
    let coordinates = || -> Result<(String, String), openssl::error::ErrorStack> {
        let ec = key.ec_key()?;
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        let mut ctx = openssl::bn::BigNumContext::new()?;
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
        Ok((
            B64.encode(x.to_vec_padded(32)?),
            B64.encode(y.to_vec_padded(32)?),
        ))
    };
    let (x, y) = coordinates().unwrap_or_default();
    json!({"use": "sig", "kty": "EC", "kid": key_id, "crv": "P-256", "alg": "ES256", "x": x, "y": y})
}

/// The ServiceAccount admission plugin, on a pod being created: mirror pods may not refer to
/// service accounts, Secrets or ConfigMaps; other pods get `serviceAccountName` (`default`
/// unless set), which must exist, and unless automounting is off, the `kube-api-access-*`
/// volume mounted in every container that has nothing at its path.
pub fn admit_pod(store: &Store, pod: &mut Value) -> Result<(), ApiError> {
    let name = name_of(pod).to_owned();
    let forbidden = |why: &str| ApiError::forbidden("pods", &name, why);
    if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        return match crate::pod::manifest::api_references(&typed) {
            Some(what) => Err(forbidden(&format!("a mirror pod may not reference {what}"))),
            None => Ok(()),
        };
    }
    let namespace = objects::namespace_of(pod).to_owned();
    let spec = &mut pod["spec"];
    let account = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    spec["serviceAccountName"] = json!(account);
    spec["serviceAccount"] = json!(account);
    let Some(sa) = store.get(Resource::ServiceAccounts, &namespace, &account) else {
        return Err(forbidden(&format!("error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found")));
    };
    // The account's image pull secrets, for a pod that names none.
    let pull = spec["imagePullSecrets"]
        .as_array()
        .is_none_or(|a| a.is_empty());
    if pull
        && sa["imagePullSecrets"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    {
        spec["imagePullSecrets"] = sa["imagePullSecrets"].clone();
    }
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let existing = volumes
        .iter()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with("kube-api-access-"))
        .map(str::to_owned);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("kube-api-access-{}", objects::random_suffix()));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        // (`get_mut`: indexing a missing field mutably would add it as null.)
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let has = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == MOUNT_PATH);
            if !has {
                if !c["volumeMounts"].is_array() {
                    c["volumeMounts"] = json!([]);
                }
                c["volumeMounts"]
                    .as_array_mut()
                    .expect("array")
                    .push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        if !spec["volumes"].is_array() {
            spec["volumes"] = json!([]);
        }
        spec["volumes"].as_array_mut().expect("array").push(json!({
            "name": volume_name,
            "projected": {
                "defaultMode": 0o644,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": ACCESS_EXPIRATION, "path": "token"}},
                    {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
    Ok(())
}

/// The objects every namespace has (kube-controller-manager's serviceaccounts and
/// root-ca-cert-publisher controllers): the `default` service account and `kube-root-ca.crt`.
pub fn ensure_defaults(store: &Store, ca_pem: &str) {
    for ns in store.list(Resource::Namespaces, None).0 {
        if !ns["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let namespace = name_of(&ns);
        ensure_default_account(store, namespace);
        let want = json!({"ca.crt": ca_pem});
        keep(
            store,
            Resource::ConfigMaps,
            namespace,
            ROOT_CA,
            "data",
            want,
            |data| {
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA, "namespace": namespace,
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": data})
            },
        );
    }
}

/// One of the API's own objects, kept with `field` as wanted: made (`make(want)`) if missing,
/// the field put back if it changed.
pub(super) fn keep(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
    field: &str,
    want: Value,
    make: impl FnOnce(Value) -> Value,
) {
    match store.get(resource, namespace, name) {
        Some(obj) if obj[field] == want => {}
        Some(_) => {
            let _ = store.update(resource, namespace, name, |old| {
                let mut new = old.clone();
                new[field] = want.clone();
                Ok(Some(new))
            });
        }
        None => create(store, resource, namespace, make(want)),
    }
}

/// Makes the namespace's `default` service account unless it has one.
pub fn ensure_default_account(store: &Store, namespace: &str) {
    if store
        .get(Resource::ServiceAccounts, namespace, "default")
        .is_none()
    {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace}});
        create(store, Resource::ServiceAccounts, namespace, sa);
    }
}

pub(super) fn create(store: &Store, resource: Resource, namespace: &str, obj: Value) {
    let admitted = objects::admit_create(
        resource,
        Some(namespace),
        obj,
        objects::FieldValidation::Strict,
    );
    let result = admitted.and_then(|a| store.create(resource, a.object));
    if let Err(e) = result {
        if e.code != 409 {
            tracing::warn!(namespace, resource = resource.plural(), error = %e.message, "make a namespace's default object");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        Tokens::new(PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap())
    }

    #[test]
    fn tokens_verify_only_unexpired_and_unaltered() {
        let t = tokens();
        let claims = json!({"iss": ISSUER, "exp": 2000, "nbf": 1000, "sub": "x"});
        let token = t.sign(&claims).unwrap();
        assert_eq!(t.verify(&token, 1500).unwrap()["sub"], "x");
        assert!(t.verify(&token, 2000).is_none(), "expired");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(json!({"iss": ISSUER, "exp": 9999, "sub": "root"}).to_string());
        assert!(t.verify(&parts.join("."), 1500).is_none(), "altered claims");
        assert!(tokens().verify(&token, 1500).is_none(), "another key");
    }

    /// What an OIDC relying party does: the token's `kid` names a key of the JWKS, and that
    /// key (rebuilt from its coordinates alone) verifies the signature.
    #[test]
    fn the_published_key_set_verifies_the_tokens() {
        let t = tokens();
        let token = t.sign(&json!({"iss": ISSUER, "sub": "x"})).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let head: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
        let jwks = t.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], head["kid"]);
        assert_eq!(t.openid_configuration()["issuer"], ISSUER);
        let coord =
            |c: &str| BigNum::from_slice(&B64.decode(key[c].as_str().unwrap()).unwrap()).unwrap();
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let public = openssl::ec::EcKey::from_public_key_affine_coordinates(
            &group,
            &coord("x"),
            &coord("y"),
        )
        .unwrap();
        let raw = B64.decode(parts[2]).unwrap();
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&raw[..32]).unwrap(),
            BigNum::from_slice(&raw[32..]).unwrap(),
        )
        .unwrap();
        let digest = hash(
            MessageDigest::sha256(),
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
        )
        .unwrap();
        assert!(sig.verify(&digest, &public).unwrap());
    }
}
