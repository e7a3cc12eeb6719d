//! Test certificates, made fresh by each test with rcgen and written to its own directory: a CA,
//! a server certificate and a client certificate it signed, and a second CA that signed
//! nothing of this (to be "the wrong CA"). Nothing is committed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

#[derive(Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Certificates under `dir`; the server's names `server_names` (host names or IP addresses).
    pub fn new(dir: &Path, server_names: &[&str]) -> Self {
        fs::create_dir_all(dir).expect("the certificates' directory");
        let ca = issuer("vehicle-state test CA");
        let other = issuer("some other CA");

        let mut server = CertificateParams::new(Vec::<String>::new()).expect("params");
        server
            .distinguished_name
            .push(DnType::CommonName, server_names[0]);
        for name in server_names {
            server.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            });
        }
        let server_key = KeyPair::generate().expect("a key");
        let server_cert = server.signed_by(&server_key, &ca).expect("sign");

        let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
        // PostgreSQL's `clientcert=verify-full` compares the CN with the role.
        client
            .distinguished_name
            .push(DnType::CommonName, "postgres");
        let client_key = KeyPair::generate().expect("a key");
        let client_cert = client.signed_by(&client_key, &ca).expect("sign");

        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).expect("write a certificate");
            // Servers refuse a private key others may read.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            client_cert: write("client.pem", &client_cert.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
        }
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}
