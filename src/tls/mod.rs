//! TLS material: loading a configured certificate, or generating and reusing a
//! self-signed one, and building the rustls server configuration.
//!
//! This is the only module that names rustls; listeners get an `Arc<ServerConfig>`, and
//! the HTTPS listener accepts connections with `stream::accept` (a TLS stream that holds
//! no buffers while idle).
//! Every configuration resolves its certificate through one `CertStore`, so a renewed
//! certificate (reload, or new files on disk) reaches every listener without a restart.
//! It checks what a person can get wrong (missing files, expiry, a key that does
//! not match the certificate) and says which config key to fix.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::sync::Locked;

pub mod stream;

/// File names of the generated certificate inside `server.state_dir`.
pub const GENERATED_CERT: &str = "selfsigned-cert.pem";
pub const GENERATED_KEY: &str = "selfsigned-key.pem";
/// File names of the certificate obtained by ACME inside `server.state_dir`.
pub const ACME_CERT: &str = "acme-cert.pem";
pub const ACME_KEY: &str = "acme-key.pem";

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A generated certificate is replaced when it has less than this left.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);
const GENERATED_VALIDITY: time::Duration = time::Duration::days(365);

/// A certificate and key, checked and ready to serve.
pub struct Loaded {
    certified: Arc<CertifiedKey>,
    /// SHA-256 of the leaf certificate, as colon-separated hex.
    pub fingerprint: String,
    /// Where the certificate came from, for the log line.
    pub origin: CertOrigin,
}

impl Loaded {
    /// The line to log about this certificate.
    pub fn describe(&self) -> (&'static str, &Path) {
        match &self.origin {
            CertOrigin::Configured(p) => ("using configured certificate", p),
            CertOrigin::Generated(p) => ("generated self-signed certificate", p),
            CertOrigin::Reused(p) => ("reusing self-signed certificate", p),
            CertOrigin::Acme(p) => ("using the certificate obtained by ACME", p),
        }
    }
}

/// The certificate every TLS listener serves, replaceable while they run, and the
/// TLS-ALPN-01 challenge certificates of an ACME order in progress (by server name).
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    challenges: std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the CA's validation offers acme-tls/1; it gets the challenge or nothing.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.locked().get(&name).cloned();
        }
        Some(self.current.load_full())
    }
}

/// Loaded TLS material, ready for listeners.
pub struct TlsMaterial {
    pub server_config: Arc<ServerConfig>,
    store: Arc<CertStore>,
    /// SHA-256 of the leaf certificate, as colon-separated hex.
    pub fingerprint: String,
    /// Where the certificate came from, for the startup log line.
    pub origin: CertOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOrigin {
    Configured(PathBuf),
    Generated(PathBuf),
    Reused(PathBuf),
    Acme(PathBuf),
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("failed to read {path} (config key `{key}`): {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file holds no usable PEM item.
    #[error(
        "no PEM {what} found in {path} (config key `{key}`): expected a \"-----BEGIN {what}\" block"
    )]
    NoPem {
        key: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    /// The certificate is outside its validity period.
    #[error(
        "certificate {path} (config key `https.cert`) {problem}; renew it or remove `https.cert`/`https.key` to use a generated self-signed certificate"
    )]
    Validity { path: PathBuf, problem: String },
    /// The certificate does not parse as X.509.
    #[error(
        "certificate {path} (config key `https.cert`) is not a valid X.509 certificate: {detail}"
    )]
    BadCertificate { path: PathBuf, detail: String },
    /// The private key does not belong to the certificate.
    #[error(
        "private key {key_path} (config key `https.key`) does not match certificate {cert_path} (config key `https.cert`)"
    )]
    Mismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    /// rustls refused the certificate or key for another reason.
    #[error("cannot use certificate {cert_path} with key {key_path}: {detail}")]
    Rustls {
        cert_path: PathBuf,
        key_path: PathBuf,
        detail: String,
    },
    /// A self-signed certificate could not be generated.
    #[error("failed to generate a self-signed certificate: {0}")]
    Generate(String),
    /// The state directory could not be written.
    #[error("failed to write {path} (config key `server.state_dir`): {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TlsMaterial {
    /// Server configurations for `loaded`, resolving through a store that `replace` updates.
    ///
    /// # Errors
    /// rustls refuses the protocol versions of the provider (it does not).
    pub fn new(loaded: Loaded) -> Result<TlsMaterial, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let store = Arc::new(CertStore {
            current: ArcSwap::new(loaded.certified),
            challenges: std::sync::Mutex::default(),
        });
        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        // Browsers never offer acme-tls/1; the CA's validation offers nothing else.
        server_config.alpn_protocols =
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(TlsMaterial {
            server_config: Arc::new(server_config),
            store,
            fingerprint: loaded.fingerprint,
            origin: loaded.origin,
        })
    }

    /// Serves `loaded` from now on, on every listener; open connections keep theirs.
    pub fn replace(&self, loaded: &Loaded) {
        self.store.current.store(Arc::clone(&loaded.certified));
    }

    /// Answers TLS-ALPN-01 validation for `name` with `challenge` until `clear_challenges`.
    pub fn add_challenge(&self, name: &str, challenge: &Loaded) {
        self.store
            .challenges
            .locked()
            .insert(name.to_ascii_lowercase(), Arc::clone(&challenge.certified));
    }

    pub fn clear_challenges(&self) {
        self.store.challenges.locked().clear();
    }

    /// The HTTPS configuration; when TURN shares the port, "stun.turn" joins the ALPN
    /// list, last, so that browsers still get HTTP.
    pub fn https_server_config(&self, shared_with_turn: bool) -> Arc<ServerConfig> {
        if !shared_with_turn {
            return Arc::clone(&self.server_config);
        }
        let mut config = (*self.server_config).clone();
        config.alpn_protocols.push(b"stun.turn".to_vec());
        Arc::new(config)
    }

    /// The same certificate for TURN over TLS: no ALPN, since TURN clients may offer
    /// none or only "stun.turn", which an HTTP ALPN list would refuse.
    pub fn turn_server_config(&self) -> Arc<ServerConfig> {
        let mut config = (*self.server_config).clone();
        config.alpn_protocols = Vec::new();
        Arc::new(config)
    }
}

/// Loads the configured certificate, or reuses or generates a self-signed one, and
/// builds the listeners' configurations around it.
///
/// # Errors
/// See [`TlsError`]; every variant names the file and the config key.
pub fn load(config: &Config) -> Result<(TlsMaterial, Loaded), TlsError> {
    let loaded = load_certificate(config)?;
    let summary = Loaded {
        certified: Arc::clone(&loaded.certified),
        fingerprint: loaded.fingerprint.clone(),
        origin: loaded.origin.clone(),
    };
    Ok((TlsMaterial::new(loaded)?, summary))
}

/// Loads the configured certificate, or reuses or generates a self-signed one.
///
/// # Errors
/// See [`TlsError`]; every variant names the file and the config key.
pub fn load_certificate(config: &Config) -> Result<Loaded, TlsError> {
    if let (Some(cert_path), Some(key_path)) = (&config.https.cert, &config.https.key) {
        let chain = read_certs(cert_path, "https.cert")?;
        check_validity(cert_path, &chain[0], time::OffsetDateTime::now_utc())?;
        let key = read_key(key_path, "https.key")?;
        return build(
            chain,
            key,
            cert_path,
            key_path,
            CertOrigin::Configured(cert_path.clone()),
        );
    }
    let dir = &config.server.state_dir;
    if config.acme.enabled
        && let Some(loaded) = acme_stored(config, time::OffsetDateTime::now_utc())
    {
        return Ok(loaded);
    }
    let cert_path = dir.join(GENERATED_CERT);
    let key_path = dir.join(GENERATED_KEY);
    let names = self_signed_names(&config.https.extra_names);
    if let Some(chain) = reusable(&cert_path, &key_path, &names) {
        let key = read_key(&key_path, "server.state_dir")?;
        return build(
            chain,
            key,
            &cert_path,
            &key_path,
            CertOrigin::Reused(cert_path.clone()),
        );
    }
    generate(dir, &cert_path, &key_path, &names)?;
    let chain = read_certs(&cert_path, "server.state_dir")?;
    let key = read_key(&key_path, "server.state_dir")?;
    build(
        chain,
        key,
        &cert_path,
        &key_path,
        CertOrigin::Generated(cert_path.clone()),
    )
}

/// The certificate ACME obtained earlier, if it is still valid at `now` and covers every
/// configured domain (a new domain means a new order).
pub fn acme_stored(config: &Config, now: time::OffsetDateTime) -> Option<Loaded> {
    let dir = &config.server.state_dir;
    let (cert_path, key_path) = (dir.join(ACME_CERT), dir.join(ACME_KEY));
    let chain = read_certs(&cert_path, "server.state_dir").ok()?;
    let (_, not_after) = validity(&chain[0]).ok()?;
    let names = cert_names(&chain[0])?;
    if now >= not_after || !config.acme.domains.iter().all(|d| names.contains(d)) {
        return None;
    }
    let key = read_key(&key_path, "server.state_dir").ok()?;
    build(
        chain,
        key,
        &cert_path,
        &key_path,
        CertOrigin::Acme(cert_path.clone()),
    )
    .ok()
}

/// When a certificate expires.
pub fn not_after(loaded: &Loaded) -> Option<time::OffsetDateTime> {
    validity(loaded.certified.cert.first()?)
        .ok()
        .map(|(_, end)| end)
}

/// A certificate and key from PEM text (an ACME CA's chain, a key we generated).
///
/// # Errors
/// No certificate or key in the text, or they do not match.
pub fn from_pem(
    chain_pem: &str,
    key_pem: &str,
    path: &Path,
    origin: CertOrigin,
) -> Result<Loaded, TlsError> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoPem {
            key: "acme",
            what: "CERTIFICATE",
            path: path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoPem {
        key: "acme",
        what: "PRIVATE KEY",
        path: path.to_owned(),
    })?;
    build(chain, key, path, path, origin)
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for `name`: it carries
/// the acmeIdentifier extension with the SHA-256 digest of the key authorization (RFC 8737).
///
/// # Errors
/// rcgen refuses the name.
pub fn acme_challenge(name: &str, digest: &[u8]) -> Result<Loaded, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let path = PathBuf::from(format!("acme-challenge:{name}"));
    // Not `build`: its consistency check parses the certificate with webpki, which refuses
    // the critical acmeIdentifier extension that this certificate exists to carry.
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let chain = vec![cert.der().clone()];
    Ok(Loaded {
        fingerprint: fingerprint(&chain[0]),
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        origin: CertOrigin::Generated(path),
    })
}

/// What `switchboard doctor` reports about the certificate the server serves (or will).
#[derive(Debug)]
pub struct CertInfo {
    pub path: PathBuf,
    /// Whether it is Switchboard's generated self-signed certificate.
    pub generated: bool,
    pub names: Vec<String>,
    pub not_after: time::OffsetDateTime,
}

/// Reads the certificate `load_certificate` would use, without generating or writing
/// anything. `Ok(None)`: no certificate is configured and none was generated yet.
///
/// # Errors
/// The configured files are unreadable, not PEM, expired, or do not match (as at start).
pub fn inspect(config: &Config) -> Result<Option<CertInfo>, TlsError> {
    let dir = &config.server.state_dir;
    let (cert_path, key_path, generated) = match (&config.https.cert, &config.https.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ if config.acme.enabled && dir.join(ACME_CERT).exists() => {
            (dir.join(ACME_CERT), dir.join(ACME_KEY), false)
        }
        _ => {
            let cert = dir.join(GENERATED_CERT);
            if !cert.exists() {
                return Ok(None);
            }
            (cert, dir.join(GENERATED_KEY), true)
        }
    };
    let key_name = if generated {
        "server.state_dir"
    } else {
        "https.cert"
    };
    let chain = read_certs(&cert_path, key_name)?;
    check_validity(&cert_path, &chain[0], time::OffsetDateTime::now_utc())?;
    let names = cert_names(&chain[0]).unwrap_or_default();
    let (_, not_after) = validity(&chain[0]).map_err(|detail| TlsError::BadCertificate {
        path: cert_path.clone(),
        detail,
    })?;
    let key = read_key(
        &key_path,
        if generated {
            "server.state_dir"
        } else {
            "https.key"
        },
    )?;
    build(
        chain,
        key,
        &cert_path,
        &key_path,
        CertOrigin::Configured(cert_path.clone()),
    )?;
    Ok(Some(CertInfo {
        path: cert_path,
        generated,
        names,
        not_after,
    }))
}

/// Accepts any certificate: the listener is checked here, the certificate above.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client for `switchboard doctor` that accepts any certificate: it checks that a
/// listener answers (the certificate is checked separately, from its files).
pub fn probe_connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(probe_client_config(alpn))
}

/// The client configuration of [`probe_connector`], for blocking or hand-driven clients
/// (the benchmarks' TURN-over-TLS generator).
pub fn probe_client_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A client configuration that verifies servers with the platform's roots (the webhooks'
/// HTTPS client). Without a usable trust store it trusts nothing, so every HTTPS endpoint
/// fails (and says why) while plain HTTP ones still work.
pub fn client_config() -> rustls::ClientConfig {
    use hyper_rustls::ConfigBuilderExt as _;
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
    };
    match builder().try_with_platform_verifier() {
        Ok(with_roots) => with_roots.with_no_client_auth(),
        Err(e) => {
            tracing::warn!(error = %e, "no system trust store: HTTPS clients (webhooks) will fail");
            builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// The names a generated certificate covers: loopback, the host name, and `extra`.
pub fn self_signed_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = gethostname::gethostname().into_string()
        && !host.is_empty()
    {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The SHA-256 fingerprint of a DER certificate, as browsers show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    origin: CertOrigin,
) -> Result<Loaded, TlsError> {
    let fingerprint = fingerprint(&chain[0]);
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        },
        other => TlsError::Rustls {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            detail: other.to_string(),
        },
    })?;
    Ok(Loaded {
        certified: Arc::new(certified),
        fingerprint,
        origin,
    })
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoPem {
            key,
            what: "CERTIFICATE",
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoPem {
        key,
        what: "PRIVATE KEY",
        path: path.to_owned(),
    })
}

/// Checks that `now` falls inside the certificate's validity period.
fn check_validity(
    path: &Path,
    cert: &CertificateDer<'_>,
    now: time::OffsetDateTime,
) -> Result<(), TlsError> {
    let (not_before, not_after) = validity(cert).map_err(|detail| TlsError::BadCertificate {
        path: path.to_owned(),
        detail,
    })?;
    if now > not_after {
        return Err(TlsError::Validity {
            path: path.to_owned(),
            problem: format!("expired on {not_after}"),
        });
    }
    if now < not_before {
        return Err(TlsError::Validity {
            path: path.to_owned(),
            problem: format!("is not valid before {not_before}"),
        });
    }
    Ok(())
}

fn validity(
    cert: &CertificateDer<'_>,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| e.to_string())?;
    let v = parsed.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// The subject alternative names of a certificate, IPs printed as text.
fn cert_names(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    Some(names)
}

/// A previously generated certificate, if it covers `names` and is not near expiry.
fn reusable(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Option<Vec<CertificateDer<'static>>> {
    if !key_path.exists() {
        return None;
    }
    let chain = read_certs(cert_path, "server.state_dir").ok()?;
    let (_, not_after) = validity(&chain[0]).ok()?;
    let covered = cert_names(&chain[0])?;
    let fresh = time::OffsetDateTime::now_utc() + RENEW_BEFORE < not_after;
    let all_names = names.iter().all(|n| covered.contains(n));
    (fresh && all_names).then_some(chain)
}

fn generate(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<(), TlsError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_error(dir))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + GENERATED_VALIDITY;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Switchboard self-signed");
    let key_pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(key_path, key_pair.serialize_pem().as_bytes()).map_err(write_error(key_path))?;
    write_private(cert_path, cert.pem().as_bytes()).map_err(write_error(cert_path))?;
    Ok(())
}

/// Writes a file readable by its owner only, replacing any previous one atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn config_in(dir: &Path) -> Config {
        let mut config = Config::default();
        config.server.state_dir = dir.to_owned();
        config
    }

    #[test]
    fn generates_then_reuses_a_self_signed_certificate() {
        let dir = dir();
        let config = config_in(dir.path());
        let first = load_certificate(&config).expect("generate");
        assert!(matches!(first.origin, CertOrigin::Generated(_)));
        let mode = fs::metadata(dir.path().join(GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_certificate(&config).expect("reuse");
        assert!(matches!(second.origin, CertOrigin::Reused(_)));
        assert_eq!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn generated_certificate_covers_loopback_and_extra_names() {
        let dir = dir();
        let mut config = config_in(dir.path());
        config.https.extra_names = vec!["call.example.org".to_owned()];
        load_certificate(&config).expect("generate");
        let chain = read_certs(&dir.path().join(GENERATED_CERT), "x").unwrap();
        let names = cert_names(&chain[0]).unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "call.example.org"] {
            assert!(
                names.contains(&name.to_owned()),
                "{name} missing from {names:?}"
            );
        }
        // A new name forces a new certificate.
        config
            .https
            .extra_names
            .push("other.example.org".to_owned());
        let again = load_certificate(&config).expect("regenerate");
        assert!(matches!(again.origin, CertOrigin::Generated(_)));
    }

    #[test]
    fn mismatched_key_is_refused_naming_both_keys() {
        let a = dir();
        let b = dir();
        load_certificate(&config_in(a.path())).unwrap();
        load_certificate(&config_in(b.path())).unwrap();
        let mut config = Config::default();
        config.https.cert = Some(a.path().join(GENERATED_CERT));
        config.https.key = Some(b.path().join(GENERATED_KEY));
        let err = load_certificate(&config)
            .err()
            .expect("mismatch refused")
            .to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(
            err.contains("https.key") && err.contains("https.cert"),
            "{err}"
        );
    }

    #[test]
    fn expired_certificate_is_refused() {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = params.self_signed(&key_pair).unwrap();
        let dir = dir();
        let cert_path = dir.path().join("c.pem");
        let key_path = dir.path().join("k.pem");
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key_pair.serialize_pem()).unwrap();
        let mut config = Config::default();
        config.https.cert = Some(cert_path);
        config.https.key = Some(key_path);
        let err = load_certificate(&config)
            .err()
            .expect("expired refused")
            .to_string();
        assert!(
            err.contains("expired") && err.contains("https.cert"),
            "{err}"
        );
    }

    #[test]
    fn missing_certificate_file_names_the_key() {
        let mut config = Config::default();
        config.https.cert = Some(PathBuf::from("/nonexistent/cert.pem"));
        config.https.key = Some(PathBuf::from("/nonexistent/key.pem"));
        let err = load_certificate(&config)
            .err()
            .expect("missing refused")
            .to_string();
        assert!(
            err.contains("https.cert") && err.contains("/nonexistent/cert.pem"),
            "{err}"
        );
    }

    #[test]
    fn fingerprint_is_colon_separated_sha256() {
        let fp = fingerprint(&CertificateDer::from(vec![1u8, 2, 3]));
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("03:90:58:C6"), "{fp}");
    }
}
