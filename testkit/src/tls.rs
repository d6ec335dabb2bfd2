//! Certificates generated at test time.

use rustls::pki_types::CertificateDer;

/// A self-signed certificate for `names`, as PEM and as DER.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn self_signed(names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).expect("rcgen can sign a certificate");
    TestCert { cert_pem: cert.pem(), key_pem: signing_key.serialize_pem(), der: cert.der().clone() }
}

/// A certificate authority made at test time, to issue backend and client
/// certificates (the CA bundle of a BackendTLSPolicy, or of a Gateway's
/// client certificate validation).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("a self-signed CA");
        TestCa { cert_pem: cert.pem(), der: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for these DNS names and URIs (subjectAltNames), signed
    /// by this CA.
    pub fn issue(&self, dns_names: &[&str], uris: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let names: Vec<String> = dns_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().expect("an IA5 URI")));
        }
        let cert = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A client certificate (extended key usage clientAuth) for `name`,
    /// signed by this CA.
    pub fn client_cert(&self, name: &str) -> TestCert {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("a valid name");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("rcgen can make a key");
        let cert = params.signed_by(&key, &self.issuer).expect("rcgen can sign a certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}
