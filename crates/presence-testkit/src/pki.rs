//! Certificates for TLS tests, made fresh by each test (no private key is
//! ever checked in): a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate, as PEM files in a temporary
//! directory.

use std::path::PathBuf;

/// A CA with one server and one client certificate, on disk.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server certificate's key (PEM).
    pub server_key: PathBuf,
    /// A client certificate (PEM), common name `presence-test-client`.
    pub client_cert: PathBuf,
    /// The client certificate's key (PEM).
    pub client_key: PathBuf,
}

fn or_panic<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: Vec<String>,
    cn: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let mut p = or_panic(CertificateParams::new(names), "leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let key = or_panic(KeyPair::generate(), "leaf key");
    let cert = or_panic(p.signed_by(&key, issuer), "leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Makes a CA and its two certificates.
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = or_panic(tempfile::tempdir(), "tempdir");
        let mut ca_params = or_panic(CertificateParams::new(Vec::<String>::new()), "ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "presence test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = or_panic(KeyPair::generate(), "ca key");
        let ca_cert = or_panic(ca_params.self_signed(&ca_key), "ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str, usage| leaf(&issuer, names, cn, usage);
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "presence-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            or_panic(std::fs::write(&p, text), name);
            p
        };
        Self {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
            issuer,
        }
    }

    /// Returns another server certificate of this CA for `names` (PEM
    /// certificate, PEM key), e.g. a renewed one.
    pub fn server(&self, cn: &str, names: &[&str]) -> (String, String) {
        leaf(
            &self.issuer,
            names.iter().map(|n| n.to_string()).collect(),
            cn,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Returns another client certificate of this CA (PEM certificate,
    /// PEM key).
    pub fn client(&self, cn: &str) -> (String, String) {
        leaf(
            &self.issuer,
            Vec::new(),
            cn,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
