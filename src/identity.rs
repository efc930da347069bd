//! Identity: who a node is and how it proves it belongs to the cluster — the cluster CA
//! ([`ClusterCa`]) and the TLS credentials it issues each node.
//!
//! Every link is mutually authenticated TLS 1.3. A node's identity is a fresh Ed25519 key; its
//! membership is a certificate for that key signed by the cluster CA. The CA comes from, in order:
//!
//! 1. **CA files** (production): the CA certificate plus this node's certificate and key, issued
//!    by your own PKI — [`ClusterCa::files`].
//! 2. **A cluster secret** (`PHALANX_SECRET` or `--secret-file`): the CA key is derived from the
//!    secret (PBKDF2-HMAC-SHA256, [`SECRET_ROUNDS`] rounds, then HKDF), so every node that knows
//!    the secret derives the same CA and issues its own node certificate —
//!    [`ClusterCa::secret`]. A secret must be strong ([`check_secret_strength`]): anyone who
//!    reaches a node's port sees a certificate signed with the derived key and can test guesses
//!    offline, so the secret has to be beyond guessing, not merely unknown.
//! 3. **Zero config**: a random secret created on first run in `$XDG_CONFIG_HOME/phalanx/secret`
//!    (or `~/.config/phalanx/secret`, mode 0600) and shared by every node of that user on the
//!    host. Copy that file (or its contents as `PHALANX_SECRET`) to other machines to let them
//!    join — [`ClusterCa::local`].
//!
//! A node without the membership cannot complete a handshake: it never reaches a registry and can
//! neither call nor be called.
//!
//! A node certificate's Common Name is the node id, and a QUIC link is refused when the id a peer
//! claims differs from the one its certificate names ([`certified_node_id`]). With CA files only
//! your PKI issues certificates, so a node can only ever be the id it was issued; with a secret,
//! whoever holds it can derive the CA key and certify any id — the secret is the trust boundary.
//!
//! ```
//! use phalanx::identity::ClusterCa;
//!
//! let secret = "9f1c2b7e0d4a8c3f6e5b1a2d7c9e0f4b";   // e.g. `openssl rand -hex 16`
//! let a = ClusterCa::secret(secret).credentials("node-a").unwrap();
//! let b = ClusterCa::secret(secret).credentials("node-b").unwrap();
//! assert_eq!(a.ca_fingerprint(), b.ca_fingerprint());   // same secret, same CA
//! assert_ne!(a.fingerprint(), b.fingerprint());         // each node has its own key
//! ```

use crate::error::{Error, ErrorKind, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SerialNumber,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every node certificate carries and every client verifies.
pub const CLUSTER_SERVER_NAME: &str = "phalanx.cluster";

/// ALPN protocol id of Phalanx links.
pub const ALPN: &[u8] = b"phalanx/1";

/// Where the cluster CA comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClusterCa {
    /// CA certificate plus this node's certificate chain and private key, as PEM files.
    Files {
        /// The cluster CA certificate.
        ca_cert: PathBuf,
        /// This node's certificate (chain), signed by the CA.
        cert: PathBuf,
        /// This node's private key (PKCS#8).
        key: PathBuf,
    },
    /// A CA derived from a shared secret.
    Secret(String),
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files { ca_cert, cert, key } => f
                .debug_struct("Files")
                .field("ca_cert", ca_cert)
                .field("cert", cert)
                .field("key", key)
                .finish(),
            Self::Secret(_) => f.write_str("Secret(..)"),
        }
    }
}

impl ClusterCa {
    /// ClusterCa by CA-issued files.
    pub fn files(
        ca_cert: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        Self::Files {
            ca_cert: ca_cert.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// ClusterCa by a shared secret.
    pub fn secret(secret: impl Into<String>) -> Self {
        Self::Secret(secret.into())
    }

    /// The zero-config membership: `PHALANX_SECRET` if set, otherwise the user's secret file,
    /// created on first use.
    pub fn local() -> Result<Self> {
        if let Ok(secret) = std::env::var("PHALANX_SECRET")
            && !secret.is_empty()
        {
            return Ok(Self::Secret(secret));
        }
        let path = secret_file_path()?;
        read_or_create_secret(&path).map(Self::Secret)
    }

    /// Issues this node's credentials: a fresh key and a certificate signed by the cluster CA,
    /// naming `node_id` as its subject Common Name. With [`ClusterCa::files`], the given
    /// certificate must already name `node_id` (peers check that a node's certificate names the
    /// id it claims).
    pub fn credentials(&self, node_id: &str) -> Result<Credentials> {
        match self {
            Self::Secret(secret) => credentials_from_secret(secret, node_id),
            Self::Files { ca_cert, cert, key } => {
                credentials_from_files(ca_cert, cert, key, node_id)
            }
        }
    }
}

/// The node id a certificate was issued to: its subject Common Name, if it has one.
///
/// Links check it against the id a peer claims in its hello, so a member cannot pose as another
/// node.
///
/// ```
/// use phalanx::identity::{ClusterCa, certified_node_id};
///
/// let creds = ClusterCa::secret("9f1c2b7e0d4a8c3f6e5b1a2d7c9e0f4b").credentials("node-a").unwrap();
/// assert_eq!(certified_node_id(creds.certificate()).as_deref(), Some("node-a"));
/// ```
pub fn certified_node_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = cert.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// This node's TLS identity and the CA it trusts.
#[derive(Clone)]
pub struct Credentials {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    /// A key every member derives from the cluster secret, for what members announce outside
    /// TLS (mDNS records); `None` with CA files.
    announce_key: Option<[u8; 32]>,
    /// Checks member certificates outside TLS (built once, on first use).
    member_verifier: Arc<std::sync::OnceLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("fingerprint", &self.fingerprint())
            .field("ca_fingerprint", &self.ca_fingerprint())
            .finish()
    }
}

impl Credentials {
    /// This node's certificate (the leaf of its chain).
    ///
    /// ```
    /// let creds = phalanx::identity::ClusterCa::secret("9f1c2b7e0d4a8c3f6e5b1a2d7c9e0f4b").credentials("n1").unwrap();
    /// assert!(!creds.certificate().is_empty());
    /// ```
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// A key every member derives alike for `purpose` (from the cluster secret); `None` with CA
    /// files, where members share no secret.
    #[cfg(feature = "nats")]
    pub(crate) fn shared_key(&self, purpose: &str) -> Option<[u8; 32]> {
        let base = self.announce_key.as_ref()?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"phalanx/shared/v1");
        let mut key = [0u8; 32];
        let info = [purpose.as_bytes()];
        salt.extract(base)
            .expand(&info, ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .ok()?;
        Some(key)
    }

    /// Signs `message` as a member (HMAC-SHA256 with a key derived from the cluster secret), hex;
    /// `None` when the membership comes from CA files (no key shared by all members).
    pub fn sign_announcement(&self, message: &[u8]) -> Option<String> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.announce_key.as_ref()?);
        let tag = ring::hmac::sign(&key, message);
        Some(hex(&tag.as_ref()[..16]))
    }

    /// Whether `signature` is a member's [`Credentials::sign_announcement`] of `message`; `None`
    /// when this node cannot tell (CA files).
    pub fn verify_announcement(&self, message: &[u8], signature: &str) -> Option<bool> {
        let expected = self.sign_announcement(message)?;
        // Compared in constant time: a LAN neighbour learns nothing from how fast a guess fails.
        let (a, b) = (expected.as_bytes(), signature.as_bytes());
        Some(a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0)
    }

    /// SHA-256 of this node's certificate, hex (announced by mDNS).
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.chain[0])
    }

    /// SHA-256 of the CA certificate, hex.
    pub fn ca_fingerprint(&self) -> String {
        sha256_hex(&self.ca)
    }

    /// TLS server side: our certificate, and client certificates must chain to the CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(tls_error)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.private_key())
            .map_err(tls_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS client side: the server must chain to the CA; we present our certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.private_key())
            .map_err(tls_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// This node's certificate chain (leaf first).
    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Signs `message` with this node's key, as a TLS 1.3 signature (scheme chosen for the key
    /// type: Ed25519 or ECDSA). Peers check it with [`Credentials::verify_signed`].
    pub(crate) fn sign(&self, message: &[u8]) -> Result<(rustls::SignatureScheme, Vec<u8>)> {
        use rustls::SignatureScheme as S;
        let key = provider()
            .key_provider
            .load_private_key(self.private_key())
            .map_err(tls_error)?;
        let signer = key
            .choose_scheme(&[
                S::ED25519,
                S::ECDSA_NISTP256_SHA256,
                S::ECDSA_NISTP384_SHA384,
            ])
            .ok_or_else(|| tls_error("the node key cannot sign with a supported scheme"))?;
        let signature = signer.sign(message).map_err(tls_error)?;
        Ok((signer.scheme(), signature))
    }

    /// Checks that `chain` is a member's: it chains to the cluster CA and its leaf names
    /// `node_id`.
    pub(crate) fn verify_member(
        &self,
        chain: &[CertificateDer<'static>],
        node_id: &str,
    ) -> Result<()> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| auth_error("no certificate"))?;
        let verifier = match self.member_verifier.get() {
            Some(verifier) => verifier.clone(),
            None => {
                let built = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    self.roots()?,
                    provider(),
                )
                .build()
                .map_err(tls_error)?;
                self.member_verifier.get_or_init(|| built).clone()
            }
        };
        verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .map_err(|e| auth_error(format!("not a member's certificate: {e}")))?;
        match certified_node_id(leaf) {
            Some(named) if named == node_id => Ok(()),
            named => Err(auth_error(format!(
                "the certificate names {named:?}, not '{node_id}'"
            ))),
        }
    }

    /// Checks a [`Credentials::sign`] signature of `message` by the holder of `cert`.
    pub(crate) fn verify_signed(
        cert: &CertificateDer<'_>,
        message: &[u8],
        scheme: rustls::SignatureScheme,
        signature: &[u8],
    ) -> Result<()> {
        use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
        use rustls::SignatureScheme as S;
        let algorithm: &'static dyn VerificationAlgorithm = match scheme {
            S::ED25519 => &sig::ED25519,
            S::ECDSA_NISTP256_SHA256 => &sig::ECDSA_P256_SHA256_ASN1,
            S::ECDSA_NISTP384_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
            other => {
                return Err(auth_error(format!(
                    "unsupported signature scheme {other:?}"
                )));
            }
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| auth_error(format!("unreadable certificate: {e}")))?;
        let key = &parsed.public_key().subject_public_key.data;
        UnparsedPublicKey::new(algorithm, key.as_ref())
            .verify(message, signature)
            .map_err(|_| auth_error("bad signature"))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls_error)?;
        Ok(Arc::new(roots))
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn auth_error(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Authentication, message.to_string())
}

fn tls_error(err: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!("TLS setup failed: {err}"),
    )
}

fn cert_error(err: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!("certificate error: {err}"),
    )
}

/// The PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// The CA as every holder of `secret` derives it: same key, same certificate.
/// Rounds of PBKDF2-HMAC-SHA256 a cluster secret goes through before it becomes the CA key: each
/// offline guess costs as much (tens of milliseconds) as a node start.
pub const SECRET_ROUNDS: u32 = 100_000;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuses a secret that could be guessed: shorter than [`MIN_SECRET_LEN`] bytes, or made of
/// fewer than 10 different characters. The error says how to make a good one.
///
/// ```
/// use phalanx::identity::check_secret_strength;
///
/// assert!(check_secret_strength("demo").is_err());
/// assert!(check_secret_strength(&"a".repeat(40)).is_err());
/// assert!(check_secret_strength("3f9a0c7d1e5b8a2c6f4d0e9b7a1c3e5f").is_ok());
/// ```
pub fn check_secret_strength(secret: &str) -> Result<()> {
    let distinct = secret
        .bytes()
        .collect::<std::collections::BTreeSet<u8>>()
        .len();
    if secret.len() >= MIN_SECRET_LEN && distinct >= 10 {
        return Ok(());
    }
    Err(cert_error(format!(
        "the cluster secret is too weak ({} bytes, {distinct} different characters; at least \
         {MIN_SECRET_LEN} bytes and 10 different characters): make one with \
         `openssl rand -hex 32`, or leave the secret unset and Phalanx creates one in {}",
        secret.len(),
        secret_file_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "~/.config/phalanx/secret".into())
    )))
}

/// The slow half of the CA derivation, remembered per secret for the life of the process
/// (several brokers of one process, or a restarted transport, derive once).
fn stretched(secret: &str) -> [u8; 32] {
    use std::sync::{Mutex, OnceLock};
    /// (SHA-256 of a secret, its stretched form), most recent last.
    type Derived = Vec<(ring::digest::Digest, [u8; 32])>;
    static DERIVED: OnceLock<Mutex<Derived>> = OnceLock::new();
    let key = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let cache = DERIVED.get_or_init(Mutex::default);
    if let Some((_, out)) = cache
        .lock()
        .expect("secret cache")
        .iter()
        .find(|(k, _)| k.as_ref() == key.as_ref())
    {
        return *out;
    }
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(SECRET_ROUNDS).expect("non-zero rounds"),
        b"phalanx/cluster-ca/v2",
        secret.as_bytes(),
        &mut out,
    );
    let mut cache = cache.lock().expect("secret cache");
    if cache.len() >= 16 {
        cache.remove(0);
    }
    cache.push((key, out));
    out
}

/// The members' shared key for signed announcements.
fn announce_key(secret: &str) -> Result<[u8; 32]> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"phalanx/announce/v1");
    let mut key = [0u8; 32];
    salt.extract(&stretched(secret))
        .expand(&[b"mdns"], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| cert_error("key derivation failed"))?;
    Ok(key)
}

fn derived_ca(secret: &str) -> Result<(CertificateParams, KeyPair, CertificateDer<'static>)> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"phalanx/cluster-ca/v2");
    let prk = salt.extract(&stretched(secret));
    let mut seed = [0u8; 32];
    prk.expand(&[b"ed25519 seed"], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut seed))
        .map_err(|_| cert_error("key derivation failed"))?;
    let pkcs8 = PrivatePkcs8KeyDer::from(ed25519_pkcs8(&seed));
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519).map_err(cert_error)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "phalanx cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(1u64));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok((params, key, cert.der().clone()))
}

fn credentials_from_secret(secret: &str, node_id: &str) -> Result<Credentials> {
    check_secret_strength(secret)?;
    let (ca_params, ca_key, ca_der) = derived_ca(secret)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let node_key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error)?;
    let mut params =
        CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()]).map_err(cert_error)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_id);
    params.distinguished_name = name;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // As long-lived as the CA: whoever holds the secret can issue certificates at will, so an
    // expiry would protect nothing and only stop a long-running node one day. Revoking means
    // changing the secret.
    params.not_before = time_now() - std::time::Duration::from_secs(24 * 3600);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.signed_by(&node_key, &issuer).map_err(cert_error)?;
    Ok(Credentials {
        ca: ca_der,
        chain: vec![cert.der().clone()],
        key: Arc::new(PrivatePkcs8KeyDer::from(node_key.serialize_der())),
        announce_key: Some(announce_key(secret)?),
        member_verifier: Arc::default(),
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn credentials_from_files(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
    node_id: &str,
) -> Result<Credentials> {
    let pem = |path: &Path, e: rustls::pki_types::pem::Error| {
        cert_error(format!("{}: {e}", path.display()))
    };
    let ca = CertificateDer::from_pem_file(ca_cert).map_err(|e| pem(ca_cert, e))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(format!("no certificate in {}", cert.display())));
    };
    let certified = certified_node_id(leaf);
    if certified.as_deref() != Some(node_id) {
        return Err(cert_error(format!(
            "{} is issued to {}, not to this node '{node_id}' (its Common Name must be the node id)",
            cert.display(),
            certified.map_or_else(|| "no Common Name".to_owned(), |cn| format!("'{cn}'")),
        )));
    }
    let key_der = PrivatePkcs8KeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
    Ok(Credentials {
        ca,
        chain,
        key: Arc::new(key_der),
        announce_key: None,
        member_verifier: Arc::default(),
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `$PHALANX_SECRET_FILE`, else `$XDG_CONFIG_HOME/phalanx/secret`, else `~/.config/phalanx/secret`.
pub fn secret_file_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PHALANX_SECRET_FILE") {
        return Ok(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| cert_error("neither XDG_CONFIG_HOME nor HOME is set; pass a secret"))?;
    Ok(config.join("phalanx").join("secret"))
}

/// Reads the secret file, creating it (atomically, mode 0600) with a random secret if missing.
fn read_or_create_secret(path: &Path) -> Result<String> {
    let io = |e: std::io::Error| cert_error(format!("secret file {}: {e}", path.display()));
    if let Some(secret) = read_secret_file(path)? {
        return Ok(secret);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let tmp = dir.join(format!(".secret.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // `create_new`: O_EXCL, so a file (or symlink) planted at this name is never written.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(secret.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    // A hard link never replaces an existing file: if another node won the race, use its secret.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new cluster secret");
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path)?
            .ok_or_else(|| cert_error(format!("secret file {} is empty", path.display()))),
        Err(e) => Err(io(e)),
    }
}

/// Reads an existing secret file (`None` if there is none, or it is empty) — only if it is a
/// regular file of this user that nobody else can read or write.
pub fn read_secret_file(path: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cert_error(format!("secret file {}: {e}", path.display()))),
    };
    if !meta.file_type().is_file() {
        return Err(cert_error(format!(
            "secret file {} is not a regular file (a symlink or a directory is refused)",
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(cert_error(format!(
            "secret file {} belongs to uid {}, not to this user (uid {me})",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(cert_error(format!(
            "secret file {} can be read by other users (mode {:o}): run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let secret = std::fs::read_to_string(path)
        .map_err(|e| cert_error(format!("secret file {}: {e}", path.display())))?;
    let secret = secret.trim();
    Ok((!secret.is_empty()).then(|| secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "unit-test-secret-0123456789abcdef";
    const S2: &str = "another-test-secret-fedcba987654";

    #[test]
    fn the_same_secret_derives_the_same_ca() {
        let a = credentials_from_secret(S1, "a").unwrap();
        let b = credentials_from_secret(S1, "b").unwrap();
        let c = credentials_from_secret(S2, "c").unwrap();
        assert_eq!(a.ca, b.ca);
        assert_ne!(a.ca, c.ca);
        assert!(a.server_config().is_ok() && a.client_config().is_ok());
    }

    #[test]
    fn secret_file_is_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("phalanx-secret-{}", rand::random::<u64>()));
        let path = dir.join("secret");
        let first = read_or_create_secret(&path).unwrap();
        let second = read_or_create_secret(&path).unwrap();
        assert_eq!(first, second);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        check_secret_strength(&first).expect("a created secret is strong");

        // Readable by others: refused, with the command that fixes it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_or_create_secret(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );

        // A symlink planted where the secret should be: refused, never followed.
        let link = dir.join("linked");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = read_or_create_secret(&link).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn weak_secrets_are_refused_with_a_way_out() {
        for weak in ["", "demo", "s3cret", &"ab".repeat(20)] {
            let err = credentials_from_secret(weak, "n").unwrap_err().to_string();
            assert!(err.contains("openssl rand -hex 32"), "{err}");
        }
    }

    #[test]
    fn files_round_trip_through_pem() {
        let (ca_params, ca_key, ca_der) = derived_ca(S1).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "n");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = std::env::temp_dir().join(format!("phalanx-pem-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_pem = rcgen::CertifiedIssuer::self_signed(
            derived_ca(S1).unwrap().0,
            derived_ca(S1).unwrap().1,
        )
        .unwrap()
        .pem();
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
        let files = ClusterCa::files(
            dir.join("ca.pem"),
            dir.join("node.pem"),
            dir.join("node.key"),
        );
        let err = files.credentials("someone-else").unwrap_err();
        assert!(err.message().contains("issued to 'n'"), "{err}");
        let creds = files.credentials("n").unwrap();
        assert_eq!(creds.ca, ca_der);
        assert_eq!(creds.chain[0], *cert.der());
        assert!(creds.server_config().is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
