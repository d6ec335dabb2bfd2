//! Listener `certificateRefs` → certificates the dataplane can serve.

use std::collections::HashMap;
use std::sync::Arc;

use agimo_shared::snapshot::{Certificate, ObjectRef};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::conditions::{Problem, Reason};
use super::grants;
use crate::api::CertificateRef;
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
