//! Listener `certificateRefs` → certificates the dataplane can serve, and a
//! Gateway's `tls.frontend` → the client certificate validation of its HTTPS
//! listeners, port by port.

use std::collections::HashMap;
use std::sync::Arc;

use agimo_shared::snapshot::{Certificate, ClientValidation, ObjectRef};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

use super::conditions::{Problem, Reason};
use super::grants;
use crate::api::{
    CertificateRef, FrontendPerPortValidation, FrontendPerPortValidationMode, FrontendTls, FrontendValidation,
    FrontendValidationMode,
};
use crate::world::World;

/// Resolves certificate refs once per Secret within one compile.
#[derive(Default)]
pub struct CertificateCache {
    parsed: HashMap<ObjectRef, Result<Arc<CertifiedKey>, String>>,
}

impl CertificateCache {
    pub fn resolve(
        &mut self,
        world: &World,
        (from_kind, gateway_namespace): (&'static str, &str),
        r: &CertificateRef,
    ) -> Result<Certificate, Problem> {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let secret = ObjectRef {
            namespace: r.namespace.clone().unwrap_or_else(|| gateway_namespace.to_owned()),
            name: r.name.clone(),
        };
        // A reference that is not allowed is RefNotPermitted whatever it names.
        let allowed = grants::allows(
            world,
            grants::From { kind: from_kind, namespace: gateway_namespace },
            grants::To { group, kind, namespace: &secret.namespace, name: &secret.name },
        );
        if !allowed {
            return Err(Problem::new(
                Reason::RefNotPermitted,
                format!(
                    "certificateRef to {kind} {secret} is not permitted: no ReferenceGrant in namespace {} allows \
                     {from_kind}s from namespace {gateway_namespace}",
                    secret.namespace
                ),
            ));
        }
        if !group.is_empty() || kind != "Secret" {
            let shown = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
            return Err(Problem::new(
                Reason::InvalidCertificateRef,
                format!("certificateRef {}: unsupported kind {shown}; only core Secrets are supported", r.name),
            ));
        }
        let parsed = self.parsed.entry(secret.clone()).or_insert_with(|| load_secret(world, &secret));
        match parsed {
            Ok(key) => Ok(Certificate { secret, key: key.clone() }),
            Err(message) => Err(Problem::new(Reason::InvalidCertificateRef, format!("Secret {secret}: {message}"))),
        }
    }
}

fn load_secret(world: &World, key: &ObjectRef) -> Result<Arc<CertifiedKey>, String> {
    let secret = world.secrets.get(key).ok_or("not found")?;
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != "kubernetes.io/tls" {
        return Err(format!("type is {type_}, expected kubernetes.io/tls"));
    }
    // As the API server merges them: `stringData` wins over `data`.
    let field = |name: &str| -> Result<Vec<u8>, String> {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| secret.data.as_ref().and_then(|d| d.get(name)).map(|b| b.0.clone()))
            .ok_or_else(|| format!("has no {name}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&field("tls.crt")?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key")?)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| format!("tls.crt and tls.key cannot be used together: {e}"))?;
    Ok(Arc::new(certified))
}

/// One `caCertificateRefs` entry, whichever of the generated types (default
/// or per port) it came from.
struct CaRef<'a> {
    group: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// The validation settings that apply to one port: refs and mode.
struct PortValidation<'a> {
    refs: Vec<CaRef<'a>>,
    insecure_fallback: bool,
}

impl<'a> PortValidation<'a> {
    fn from_default(v: &'a FrontendValidation) -> Self {
        let refs = v.ca_certificate_refs.iter();
        PortValidation {
            refs: refs
                .map(|r| CaRef { group: &r.group, kind: &r.kind, name: &r.name, namespace: r.namespace.as_deref() })
                .collect(),
            insecure_fallback: v.mode == Some(FrontendValidationMode::AllowInsecureFallback),
        }
    }

    fn from_per_port(v: &'a FrontendPerPortValidation) -> Self {
        let refs = v.ca_certificate_refs.iter();
        PortValidation {
            refs: refs
                .map(|r| CaRef { group: &r.group, kind: &r.kind, name: &r.name, namespace: r.namespace.as_deref() })
                .collect(),
            insecure_fallback: v.mode == Some(FrontendPerPortValidationMode::AllowInsecureFallback),
        }
    }
}

/// The client certificate validation of a Gateway's HTTPS listeners on one
/// port, as far as it could be resolved.
#[derive(Default)]
pub struct Frontend {
    /// What the dataplane enforces; `None` when the port has no validation
    /// or no usable CA certificate.
    pub validation: Option<Arc<ClientValidation>>,
    /// Why ResolvedRefs is False: the first CA certificate ref that cannot
    /// be used.
    pub unresolved: Option<Problem>,
    /// Why Accepted is False: no CA certificate ref can be used.
    pub invalid: Option<Problem>,
}

/// Whether a Gateway's `tls.frontend` allows insecure fallback anywhere
/// (the Gateway's `InsecureFrontendValidationMode` condition).
pub fn allows_insecure_fallback(frontend: &FrontendTls) -> bool {
    let default = frontend.default.validation.as_ref();
    default.is_some_and(|v| v.mode == Some(FrontendValidationMode::AllowInsecureFallback))
        || frontend.per_port.iter().flatten().any(|p| {
            p.tls
                .validation
                .as_ref()
                .is_some_and(|v| v.mode == Some(FrontendPerPortValidationMode::AllowInsecureFallback))
        })
}

/// "PerPort ... overrides the default configuration for all Listeners
/// handling HTTPS traffic that match this port": the validation of `port`.
pub fn resolve_frontend(world: &World, gateway_namespace: &str, frontend: &FrontendTls, port: u16) -> Frontend {
    let per_port = frontend.per_port.iter().flatten().find(|p| i64::from(p.port) == i64::from(port));
    let settings = match per_port {
        Some(p) => p.tls.validation.as_ref().map(PortValidation::from_per_port),
        None => frontend.default.validation.as_ref().map(PortValidation::from_default),
    };
    let Some(settings) = settings else {
        return Frontend::default();
    };
    let mut out = Frontend::default();
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    let mut sources = Vec::new();
    for r in &settings.refs {
        match load_ca_ref(world, gateway_namespace, r) {
            Ok((source, certs)) => {
                sources.push(source);
                roots.extend(certs);
            }
            Err(problem) => {
                out.unresolved.get_or_insert(problem);
            }
        }
    }
    let no_valid = |why: String| Problem::new(Reason::NoValidCACertificate, why);
    if roots.is_empty() {
        let why = out.unresolved.as_ref().map_or_else(|| "no caCertificateRefs".to_owned(), |p| p.message.clone());
        out.invalid = Some(no_valid(format!("no valid CA certificate for client certificate validation: {why}")));
        return out;
    }
    let mut store = RootCertStore::empty();
    for root in &roots {
        // Checked by `load_ca_ref`.
        let _ = store.add(root.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider).build() {
        Ok(verifier) => {
            out.validation = Some(Arc::new(ClientValidation {
                sources,
                roots,
                verifier,
                insecure_fallback: settings.insecure_fallback,
            }))
        }
        Err(e) => {
            let message = format!("cannot validate client certificates with these CA certificates: {e}");
            out.unresolved.get_or_insert(Problem::new(Reason::InvalidCACertificateRef, message.clone()));
            out.invalid = Some(no_valid(message));
        }
    }
    out
}

/// One CA certificate ref: where it points (`ConfigMap ns/name`) and its
/// certificates, or the problem the spec names for it.
fn load_ca_ref(
    world: &World,
    gateway_namespace: &str,
    r: &CaRef<'_>,
) -> Result<(String, Vec<CertificateDer<'static>>), Problem> {
    if !r.group.is_empty() || r.kind != "ConfigMap" {
        let shown = if r.group.is_empty() { r.kind.to_owned() } else { format!("{}.{}", r.kind, r.group) };
        return Err(Problem::new(
            Reason::InvalidCACertificateKind,
            format!(
                "caCertificateRef {}: unsupported kind {shown}; only core ConfigMaps (key ca.crt) are supported",
                r.name
            ),
        ));
    }
    let key = ObjectRef { namespace: r.namespace.unwrap_or(gateway_namespace).to_owned(), name: r.name.to_owned() };
    let allowed = grants::allows(
        world,
        grants::From { kind: "Gateway", namespace: gateway_namespace },
        grants::To { group: "", kind: "ConfigMap", namespace: &key.namespace, name: &key.name },
    );
    if !allowed {
        return Err(Problem::new(
            Reason::RefNotPermitted,
            format!(
                "caCertificateRef to ConfigMap {key} is not permitted: no ReferenceGrant in namespace {} allows \
                 Gateways from namespace {gateway_namespace}",
                key.namespace
            ),
        ));
    }
    let invalid =
        |why: &str| Problem::new(Reason::InvalidCACertificateRef, format!("caCertificateRef ConfigMap {key}: {why}"));
    let config_map = world.config_maps.get(&key).ok_or_else(|| invalid("not found"))?;
    let pem: Vec<u8> = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| config_map.binary_data.as_ref().and_then(|d| d.get("ca.crt")).map(|b| b.0.clone()))
        .ok_or_else(|| invalid("has no key ca.crt"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&format!("ca.crt is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("ca.crt holds no PEM certificate"));
    }
    for cert in &certs {
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| invalid(&format!("ca.crt: not a usable CA certificate: {e}")))?;
    }
    Ok((format!("ConfigMap {key}"), certs))
}
