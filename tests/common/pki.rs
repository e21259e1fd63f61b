//! A test PKI made by the test: a CA and a leaf for example.com / localhost / 127.0.0.1 (EKU
//! serverAuth), written as PEM files for configs.

use std::path::{Path, PathBuf};

/// PEM files of one test PKI.
pub struct Pki {
    /// The CA certificate (a client's trust anchor).
    pub ca: PathBuf,
    /// The leaf certificate, signed by the CA.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

impl Pki {
    /// Makes a fresh CA and leaf in `dir`.
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "oxray Test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["example.com".to_string(), "localhost".to_string()]).unwrap();
        leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        leaf.distinguished_name.push(DnType::CommonName, "example.com");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.crt", ca_cert.pem()),
            cert: write("leaf.crt", leaf_cert.pem()),
            key: write("leaf.key", leaf_key.serialize_pem()),
        }
    }

    /// `tlsSettings` of a server with the leaf.
    pub fn server_tls(&self) -> String {
        format!(
            r#"{{"certificates": [{{"certificateFile": "{}", "keyFile": "{}"}}]}}"#,
            self.cert.display(),
            self.key.display()
        )
    }

    /// `tlsSettings` of a client that trusts only the test CA and verifies `example.com`.
    pub fn client_tls(&self) -> String {
        format!(
            r#"{{"serverName": "example.com", "disableSystemRoot": true, "certificates": [{{"certificateFile": "{}", "usage": "verify"}}]}}"#,
            self.ca.display()
        )
    }
}
