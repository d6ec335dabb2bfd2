//! BackendTLSPolicies → the TLS Agimo speaks to the Service ports they
//! target, and the policies' statuses.
//!
//! ```text
//! BackendTLSPolicy ─► targetRefs (Service, sectionName = port name) ─► the policy in force per target
//!                  │                                                     (oldest wins; others Conflicted)
//!                  └► validation: caCertificateRefs (ConfigMap ca.crt) | wellKnownCACertificates: System,
//!                     hostname (SNI), subjectAltNames ─► rustls ClientConfig per backend protocol
//! ```
//!
//! A policy's `status.ancestors` lists the Gateways whose routes send to a
//! Service it targets.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use agimo_shared::snapshot::{BackendProtocol, BackendTls, ObjectRef, TlsOrigination};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conditions::{condition, types};
use crate::api::{BackendTlsPolicy, GATEWAY_GROUP, PolicyAncestorRef, PolicyAncestorStatus, SubjectAltNameType};
use crate::world::World;

/// The Gateway API's BackendTLSPolicy reasons.
mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const CONFLICTED: &str = "Conflicted";
    pub const INVALID: &str = "Invalid";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
}

/// A Gateway's `spec.tls.backend.clientCertificateRef`, resolved.
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    pub secret: ObjectRef,
    pub key: Arc<CertifiedKey>,
}

/// A policy's validation, parsed (shared by every backend it applies to).
struct Validation {
    roots: Arc<RootCertStore>,
    trust: String,
    hostname: String,
    server_name: ServerName<'static>,
    subject_alt_names: Vec<SubjectAltName>,
    /// Hash of everything above, for [`TlsOrigination::key`].
    digest: u64,
}

#[derive(Clone, Debug, Hash)]
enum SubjectAltName {
    Hostname(String),
    Uri(String),
}

impl SubjectAltName {
    fn shown(&self) -> String {
        match self {
            SubjectAltName::Hostname(h) => format!("Hostname:{h}"),
            SubjectAltName::Uri(u) => format!("URI:{u}"),
        }
    }
}

/// What one policy is, after this compile.
struct Compiled {
    /// `Err`: why requests to its targets fail (the policy is not accepted).
    validation: Result<Arc<Validation>, String>,
    /// Accepted and ResolvedRefs, without the ancestor.
    conditions: Vec<crate::api::Condition>,
}

/// Every BackendTLSPolicy of the world, by the Service port it applies to.
pub struct Policies {
    /// (Service, sectionName) → the policy in force there.
    in_force: BTreeMap<(ObjectRef, Option<String>), ObjectRef>,
    /// Service → every policy that targets it (in force or not).
    by_service: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    compiled: BTreeMap<ObjectRef, Compiled>,
    /// Policy → the Gateways whose routes send to a Service it targets.
    ancestors: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// One `BackendTls` per (policy, protocol, client certificate).
    built: HashMap<(ObjectRef, BackendProtocol, Option<ObjectRef>), BackendTls>,
}

impl Policies {
    pub fn new(world: &World) -> Policies {
        let mut ordered: Vec<(&ObjectRef, &BackendTlsPolicy)> =
            world.backend_tls_policies.iter().map(|(k, p)| (k, p.as_ref())).collect();
        // "The oldest Policy based on creation timestamp" wins a conflict,
        // then the first in alphabetical order of {namespace}/{name}.
        ordered.sort_by(|(ka, a), (kb, b)| {
            let created = |p: &BackendTlsPolicy| p.metadata.creation_timestamp.clone().map(|t| t.0);
            let (ca, cb) = (created(a), created(b));
            ca.is_none().cmp(&cb.is_none()).then(ca.cmp(&cb)).then_with(|| ka.cmp(kb))
        });
        let mut in_force = BTreeMap::new();
        let mut by_service: BTreeMap<ObjectRef, BTreeSet<ObjectRef>> = BTreeMap::new();
        let mut compiled = BTreeMap::new();
        for (key, policy) in ordered {
            let generation = policy.metadata.generation;
            let mut conflicted_with = None;
            for target in &policy.spec.target_refs {
                if !target.group.is_empty() || target.kind != "Service" {
                    continue;
                }
                let service = ObjectRef { namespace: key.namespace.clone(), name: target.name.clone() };
                by_service.entry(service.clone()).or_default().insert(key.clone());
                match in_force.entry((service, target.section_name.clone())) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(key.clone());
                    }
                    std::collections::btree_map::Entry::Occupied(winner) => {
                        conflicted_with.get_or_insert_with(|| winner.get().clone());
                    }
                }
            }
            let (validation, resolved) = validate(world, key, policy);
            let accepted = match (&conflicted_with, &validation) {
                (Some(winner), _) => condition(
                    types::ACCEPTED,
                    false,
                    reasons::CONFLICTED,
                    format!("BackendTLSPolicy {winner} targets the same Service port and takes precedence"),
                    generation,
                ),
                (None, Err(problem)) => {
                    condition(types::ACCEPTED, false, problem.accepted_reason, &problem.message, generation)
                }
                (None, Ok(_)) => {
                    condition(types::ACCEPTED, true, reasons::ACCEPTED, "the policy is in force", generation)
                }
            };
            let conditions = vec![accepted, resolved];
            let validation = validation.map_err(|p| format!("BackendTLSPolicy {key} is not accepted: {}", p.message));
            compiled.insert(key.clone(), Compiled { validation, conditions });
        }
        Policies { in_force, by_service, compiled, ancestors: BTreeMap::new(), built: HashMap::new() }
    }

    /// The TLS for a Service port (named `port_name`) spoken with
    /// `protocol`, from the policy in force there: one naming the port
    /// (sectionName) before one naming the whole Service.
    pub fn tls_for(
        &mut self,
        service: &ObjectRef,
        port_name: Option<&str>,
        protocol: BackendProtocol,
        client: Option<&ClientCertificate>,
    ) -> Option<BackendTls> {
        let named = port_name.and_then(|p| self.in_force.get(&(service.clone(), Some(p.to_owned()))));
        let policy = named.or_else(|| self.in_force.get(&(service.clone(), None)))?.clone();
        let compiled = self.compiled.get(&policy)?;
        let cache_key = (policy.clone(), protocol, client.map(|c| c.secret.clone()));
        if let Some(built) = self.built.get(&cache_key) {
            return Some(built.clone());
        }
        let tls = match &compiled.validation {
            Err(reason) => BackendTls::Invalid(reason.clone()),
            Ok(validation) => BackendTls::Origination(Arc::new(origination(&policy, validation, protocol, client))),
        };
        self.built.insert(cache_key, tls.clone());
        Some(tls)
    }

    /// Records that `gateway` has a route sending to `service`: an
    /// ancestor of every policy that targets it.
    pub fn used_by(&mut self, service: &ObjectRef, gateway: &ObjectRef) {
        for policy in self.by_service.get(service).into_iter().flatten() {
            self.ancestors.entry(policy.clone()).or_default().insert(gateway.clone());
        }
    }

    /// Each policy's `status.ancestors` entries of ours.
    pub fn statuses(&self, controller_name: &str) -> BTreeMap<ObjectRef, Vec<PolicyAncestorStatus>> {
        let mut out = BTreeMap::new();
        for (policy, compiled) in &self.compiled {
            let ancestors = self.ancestors.get(policy).into_iter().flatten();
            let entries = ancestors
                .map(|gateway| PolicyAncestorStatus {
                    ancestor_ref: PolicyAncestorRef {
                        group: Some(GATEWAY_GROUP.to_owned()),
                        kind: Some("Gateway".to_owned()),
                        name: gateway.name.clone(),
                        namespace: Some(gateway.namespace.clone()),
                        port: None,
                        section_name: None,
                    },
                    conditions: compiled.conditions.clone(),
                    controller_name: controller_name.to_owned(),
                })
                .collect();
            out.insert(policy.clone(), entries);
        }
        out
    }
}

/// Why a policy's validation cannot be used.
struct ValidationProblem {
    accepted_reason: &'static str,
    message: String,
}

/// The policy's validation, and its ResolvedRefs condition.
fn validate(
    world: &World,
    key: &ObjectRef,
    policy: &BackendTlsPolicy,
) -> (Result<Arc<Validation>, ValidationProblem>, crate::api::Condition) {
    let generation = policy.metadata.generation;
    let v = &policy.spec.validation;
    let mut roots = RootCertStore::empty();
    let mut trust = Vec::new();
    let mut ref_problems = Vec::new();
    let mut invalid_kind = false;
    let mut digest = DefaultHasher::new();
    for r in v.ca_certificate_refs.iter().flatten() {
        if !r.group.is_empty() || r.kind != "ConfigMap" {
            invalid_kind = true;
            let shown = if r.group.is_empty() { r.kind.clone() } else { format!("{}.{}", r.kind, r.group) };
            ref_problems
                .push(format!("caCertificateRef {}: unsupported kind {shown}; only ConfigMaps are supported", r.name));
            continue;
        }
        let map = ObjectRef { namespace: key.namespace.clone(), name: r.name.clone() };
        match ca_certificates(world, &map) {
            Ok(certs) => {
                for cert in certs {
                    cert.as_ref().hash(&mut digest);
                    if let Err(e) = roots.add(cert) {
                        ref_problems
                            .push(format!("ConfigMap {map}: ca.crt holds a certificate that cannot be a CA: {e}"));
                    }
                }
                trust.push(format!("ConfigMap {map}"));
            }
            Err(message) => ref_problems.push(format!("ConfigMap {map}: {message}")),
        }
    }
    match v.well_known_ca_certificates.as_deref() {
        None => {}
        Some("System") => {
            "System".hash(&mut digest);
            roots.extend(system_roots().roots.iter().cloned());
            trust.push("System".to_owned());
        }
        Some(other) => {
            let message = format!("wellKnownCACertificates {other:?} is not supported; Agimo supports \"System\"");
            let resolved = condition(types::RESOLVED_REFS, true, reasons::RESOLVED_REFS, "", generation);
            let problem = ValidationProblem { accepted_reason: reasons::INVALID, message };
            return (Err(problem), resolved);
        }
    }
    let resolved = if ref_problems.is_empty() {
        condition(types::RESOLVED_REFS, true, reasons::RESOLVED_REFS, "every caCertificateRef resolves", generation)
    } else {
        let reason = if invalid_kind { reasons::INVALID_KIND } else { reasons::INVALID_CA_CERTIFICATE_REF };
        condition(types::RESOLVED_REFS, false, reason, ref_problems.join("; "), generation)
    };
    if roots.is_empty() {
        let message = if ref_problems.is_empty() {
            "no CA certificate: set caCertificateRefs or wellKnownCACertificates".to_owned()
        } else {
            ref_problems.join("; ")
        };
        return (Err(ValidationProblem { accepted_reason: reasons::NO_VALID_CA_CERTIFICATE, message }), resolved);
    }
    let server_name = match ServerName::try_from(v.hostname.clone()) {
        Ok(name @ ServerName::DnsName(_)) => name,
        _ => {
            let message = format!("hostname {:?} is not a DNS name", v.hostname);
            return (Err(ValidationProblem { accepted_reason: reasons::INVALID, message }), resolved);
        }
    };
    let mut subject_alt_names = Vec::new();
    for san in v.subject_alt_names.iter().flatten() {
        let parsed = match (&san.r#type, &san.hostname, &san.uri) {
            (SubjectAltNameType::Hostname, Some(h), _) if ServerName::try_from(h.as_str()).is_ok() => {
                SubjectAltName::Hostname(h.clone())
            }
            (SubjectAltNameType::Uri, _, Some(u)) => SubjectAltName::Uri(u.clone()),
            _ => {
                let message = format!("subjectAltName {san:?} has no valid value for its type");
                return (Err(ValidationProblem { accepted_reason: reasons::INVALID, message }), resolved);
            }
        };
        subject_alt_names.push(parsed);
    }
    (v.hostname.as_str(), &subject_alt_names).hash(&mut digest);
    let validation = Validation {
        roots: Arc::new(roots),
        trust: trust.join(", "),
        hostname: v.hostname.clone(),
        server_name,
        subject_alt_names,
        digest: digest.finish(),
    };
    (Ok(Arc::new(validation)), resolved)
}

/// The PEM certificates of a ConfigMap's `ca.crt`.
fn ca_certificates(world: &World, map: &ObjectRef) -> Result<Vec<CertificateDer<'static>>, String> {
    let config_map = world.config_maps.get(map).ok_or("not found")?;
    let pem = config_map.data.as_ref().and_then(|d| d.get("ca.crt")).ok_or("has no ca.crt")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca.crt is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("ca.crt holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The system's trusted CAs (`wellKnownCACertificates: System`), read once
/// per process: the one input of the compiler that is not in the world.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system's CA certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::info!(added, ignored, "the system's CA certificates, for wellKnownCACertificates: System");
        roots
    })
}

fn origination(
    policy: &ObjectRef,
    v: &Validation,
    protocol: BackendProtocol,
    client: Option<&ClientCertificate>,
) -> TlsOrigination {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(v.roots.clone(), provider.clone())
        .build()
        .expect("a root store that is not empty builds a verifier");
    let verifier = Arc::new(PolicyVerifier { webpki, subject_alt_names: v.subject_alt_names.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(c) => builder.with_client_cert_resolver(Arc::new(ClientCertResolver(c.key.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        BackendProtocol::Http1 => vec![b"http/1.1".to_vec()],
        BackendProtocol::H2c => vec![b"h2".to_vec()],
    };
    let mut key = DefaultHasher::new();
    (
        v.digest,
        policy,
        protocol as u8,
        client.map(|c| c.key.cert.iter().map(|d| d.as_ref().to_vec()).collect::<Vec<_>>()),
    )
        .hash(&mut key);
    TlsOrigination {
        policy: policy.clone(),
        hostname: v.hostname.clone(),
        subject_alt_names: v.subject_alt_names.iter().map(SubjectAltName::shown).collect(),
        trust: v.trust.clone(),
        client_certificate: client.map(|c| c.secret.clone()),
        key: key.finish(),
        config: Arc::new(config),
        server_name: v.server_name.clone(),
    }
}

/// Presents a Gateway's backend client certificate.
#[derive(Debug)]
struct ClientCertResolver(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The chain must lead to one of the policy's CAs; the certificate must be
/// valid for the policy's hostname, or, when subjectAltNames are given,
/// for one of them ("the hostname is not used for certificate
/// verification" then).
#[derive(Debug)]
struct PolicyVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    subject_alt_names: Vec<SubjectAltName>,
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.subject_alt_names.is_empty() {
            return self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        // The verifier checks the chain before the name: an error about the
        // name means the chain is good.
        let chain_ok = match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(_) => true,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => true,
            Err(e) => return Err(e),
        };
        debug_assert!(chain_ok);
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e)))))?;
        let dns: Vec<&str> = cert.valid_dns_names().collect();
        let uris: Vec<&str> = cert.valid_uri_names().collect();
        let matches = self.subject_alt_names.iter().any(|san| match san {
            SubjectAltName::Hostname(h) => {
                let name = ServerName::try_from(h.as_str()).ok();
                name.is_some_and(|n| {
                    self.webpki.verify_server_cert(end_entity, intermediates, &n, ocsp, now).is_ok()
                        || dns.iter().any(|d| d.eq_ignore_ascii_case(h))
                })
            }
            SubjectAltName::Uri(u) => uris.iter().any(|p| p == u),
        });
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
