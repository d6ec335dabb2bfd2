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
