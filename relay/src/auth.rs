//! Bearer-token authentication: EdDSA (Ed25519) JWTs minted by `relay token` and checked on every
//! `/v1` request.
//!
//! Both commands read the same `[auth]` settings, so they share one private key file: the server
//! only needs the public half, and the CLI can mint tokens without talking to the server. Extra
//! public keys keep tokens signed by a previous key valid while keys are rotated.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

/// File name of the generated signing key inside `key_dir`.
pub const DEFAULT_KEY_FILE: &str = "relay-ed25519.pem";

/// Leeway above this is a misconfiguration; capping it also keeps jsonwebtoken's unsigned
/// `now - leeway` arithmetic far from underflow.
const MAX_LEEWAY_SECONDS: u64 = 3600;

/// Real tokens are a few hundred bytes; refusing huge inputs bounds the work done on hostile ones.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------------
// Roles and claims
// ---------------------------------------------------------------------------------------------

/// Staff role carried in the `role` claim.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Doctor,
    ClinicClerk,
    Pharmacist,
    PharmacyClerk,
    Admin,
}

impl Role {
    /// Every role, in the order used by error messages.
    pub const ALL: [Role; 5] = [
        Role::Doctor,
        Role::ClinicClerk,
        Role::Pharmacist,
        Role::PharmacyClerk,
        Role::Admin,
    ];

    /// The wire name, identical to the serde representation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::ClinicClerk => "clinic_clerk",
            Role::Pharmacist => "pharmacist",
            Role::PharmacyClerk => "pharmacy_clerk",
            Role::Admin => "admin",
        }
    }

    /// Staff of a prescribing institution (`doctor`, `clinic_clerk`).
    pub fn is_clinic(&self) -> bool {
        matches!(self, Role::Doctor | Role::ClinicClerk)
    }

    /// Staff of a pharmacy (`pharmacist`, `pharmacy_clerk`).
    pub fn is_pharmacy(&self) -> bool {
        matches!(self, Role::Pharmacist | Role::PharmacyClerk)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown role {:?}; valid roles are: ", self.0)?;
        for (i, role) in Role::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(role.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The JWT payload. `sub` is the staff id, `facility` the 10-digit institution or pharmacy code.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub facility: String,
    pub role: Role,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
}

// ---------------------------------------------------------------------------------------------
// Settings and errors
// ---------------------------------------------------------------------------------------------

/// Settings deserialized by the `config` crate from the `[auth]` table (all fields have defaults).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// PKCS#8 PEM Ed25519 private key; when `None`, `key_dir/relay-ed25519.pem` (created if absent).
    pub private_key_path: Option<PathBuf>,
    /// Where the generated key lives; git-ignored.
    pub key_dir: PathBuf,
    /// SPKI PEM public keys whose tokens are still accepted (key rotation).
    pub extra_public_keys: Vec<PathBuf>,
    /// `iss` written into minted tokens and required on verified ones.
    pub issuer: String,
    /// Clock skew tolerated on `exp` (capped at one hour).
    pub leeway_seconds: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            private_key_path: None,
            key_dir: PathBuf::from(".local/keys"),
            extra_public_keys: Vec::new(),
            issuer: "relay".to_owned(),
            leeway_seconds: 30,
        }
    }
}

impl AuthSettings {
    /// The private key file that [`KeySet::load_or_create`] reads (or creates).
    pub fn signing_key_path(&self) -> PathBuf {
        self.private_key_path
            .clone()
            .unwrap_or_else(|| self.key_dir.join(DEFAULT_KEY_FILE))
    }
}

/// Why a bearer token was refused. Messages never echo the token or values taken from it, so they
/// are safe to log and to put in a problem `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not signed by a key this relay accepts (unknown or missing kid)")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Problems loading, creating or using the signing keys. The underlying error is part of the
/// message (not a `source`) so that a plain `{}` print is complete.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot create key directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot write new key file {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("{} is not a PKCS#8 PEM Ed25519 private key: {reason}", path.display())]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("{} is not an SPKI PEM Ed25519 public key: {reason}", path.display())]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("the operating system random number generator failed: {0}")]
    Random(String),
    #[error("cannot encode key: {0}")]
    Encode(String),
    #[error("token lifetime of {} seconds is too large", .0.as_secs())]
    TtlTooLarge(Duration),
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Whether [`KeySet::load_or_create`] found the signing key or had to create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Loaded(PathBuf),
    Created(PathBuf),
}

impl KeyOrigin {
    pub fn path(&self) -> &Path {
        match self {
            KeyOrigin::Loaded(path) | KeyOrigin::Created(path) => path,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key set
// ---------------------------------------------------------------------------------------------

/// The signing key plus every public key whose tokens are accepted. Cheap to clone.
#[derive(Clone)]
pub struct KeySet {
    inner: Arc<Inner>,
}

struct Inner {
    signing: EncodingKey,
    /// The signing key's public half comes first; `jwks` keeps this order.
    public: Vec<PublicKey>,
    issuer: String,
    validation: Validation,
}

struct PublicKey {
    kid: String,
    /// base64url of the 32 raw public key bytes (the JWK `x`).
    x: String,
    decoding: DecodingKey,
}

impl fmt::Debug for KeySet {
    // Only identifiers: key material (even public) has no business in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kid", &self.kid())
            .field(
                "accepted_kids",
                &self
                    .inner
                    .public
                    .iter()
                    .map(|k| k.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("issuer", &self.inner.issuer)
            .field("leeway_seconds", &self.inner.validation.leeway)
            .finish()
    }
}

impl KeySet {
    /// Loads the configured signing key. If no `private_key_path` is configured and
    /// `key_dir/relay-ed25519.pem` does not exist, creates a new Ed25519 key there (directory 0700,
    /// file 0600) and returns [`KeyOrigin::Created`] so the caller can say so.
    pub fn load_or_create(settings: &AuthSettings) -> Result<(KeySet, KeyOrigin), KeyError> {
        let (signing, origin) = match &settings.private_key_path {
            // An explicitly configured key must exist: silently minting a new one would
            // invalidate every token issued so far.
            Some(path) => (read_private_key(path)?, KeyOrigin::Loaded(path.clone())),
            None => {
                let path = settings.key_dir.join(DEFAULT_KEY_FILE);
                match read_private_key_if_present(&path)? {
                    Some(key) => (key, KeyOrigin::Loaded(path)),
                    None => create_private_key(&settings.key_dir, &path)?,
                }
            }
        };
        let extra = settings
            .extra_public_keys
            .iter()
            .map(|path| read_public_key(path))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = KeySet::from_keys(&signing, &extra, settings)?;
        Ok((keys, origin))
    }

    /// A key set with a fresh in-memory signing key (nothing on disk): for tests and throwaway
    /// runs, since its tokens die with the process.
    pub fn generate_ephemeral(settings: &AuthSettings) -> Result<KeySet, KeyError> {
        let extra = settings
            .extra_public_keys
            .iter()
            .map(|path| read_public_key(path))
            .collect::<Result<Vec<_>, _>>()?;
        KeySet::from_keys(&generate_signing_key()?, &extra, settings)
    }

    fn from_keys(
        signing: &SigningKey,
        extra: &[VerifyingKey],
        settings: &AuthSettings,
    ) -> Result<KeySet, KeyError> {
        // jsonwebtoken's EdDSA signer expects the PKCS#8 DER document.
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());

        let mut public: Vec<PublicKey> = Vec::with_capacity(1 + extra.len());
        for key in std::iter::once(&signing.verifying_key()).chain(extra) {
            let entry = PublicKey::new(key)?;
            // The same key listed twice (e.g. the current key also under extra_public_keys)
            // would only duplicate the JWKS entry.
            if !public.iter().any(|k| k.kid == entry.kid) {
                public.push(entry);
            }
        }

        let leeway = settings.leeway_seconds.min(MAX_LEEWAY_SECONDS);
        if leeway < settings.leeway_seconds {
            tracing::warn!(
                configured = settings.leeway_seconds,
                used = leeway,
                "auth.leeway_seconds is capped"
            );
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);

        Ok(KeySet {
            inner: Arc::new(Inner {
                signing: encoding,
                public,
                issuer: settings.issuer.clone(),
                validation,
            }),
        })
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of the signing public key.
    pub fn kid(&self) -> &str {
        // from_keys always pushes the signing key first.
        self.inner.public.first().map_or("", |k| k.kid.as_str())
    }

    /// Signs a token for `sub` at `facility` with `role`, valid from now for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        facility: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        let now = jiff::Timestamp::now().as_second();
        let exp = i64::try_from(ttl.as_secs())
            .ok()
            .and_then(|secs| now.checked_add(secs))
            .ok_or(KeyError::TtlTooLarge(ttl))?;
        self.sign(&Claims {
            sub: sub.to_owned(),
            facility: facility.to_owned(),
            role,
            exp,
            iat: now,
            iss: self.inner.issuer.clone(),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &self.inner.signing)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies a compact JWS (without the `Bearer ` prefix) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed("token is too long".to_owned()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| describe_bad_header(token))?;
        // Checked here, before any key lookup, so HS256 (public key used as HMAC secret) and
        // friends never reach a verifier.
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted; tokens must use EdDSA",
                header.alg
            )));
        }
        // RFC 7515 §4.1.11: a critical extension we do not implement means reject.
        if header.crit.is_some() {
            return Err(AuthError::Invalid(
                "critical header parameters are not supported".to_owned(),
            ));
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = self
            .inner
            .public
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(AuthError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(map_decode_error)
    }

    /// The JWK Set of every accepted public key, signing key first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .inner
            .public
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.x,
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

impl PublicKey {
    fn new(key: &VerifyingKey) -> Result<PublicKey, KeyError> {
        let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
        let decoding =
            DecodingKey::from_ed_components(&x).map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(PublicKey {
            kid: jwk_thumbprint(&x),
            x,
            decoding,
        })
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK: SHA-256 over the required members (`crv`, `kty`, `x`)
/// in lexicographic order without whitespace. `x` is base64url, so it needs no JSON escaping.
fn jwk_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Turns a header that jsonwebtoken could not parse into a precise refusal. Nothing from the
/// token is echoed; an `alg` it does not know (notably `none`) is reported as such.
fn describe_bad_header(token: &str) -> AuthError {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return AuthError::Malformed("expected three dot-separated segments".to_owned());
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) else {
        return AuthError::Malformed("header is not base64url".to_owned());
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return AuthError::Malformed("header is not a JSON object".to_owned());
    };
    match value.get("alg") {
        None => AuthError::Malformed("header has no alg".to_owned()),
        // A known alg means some other header field was wrong.
        Some(serde_json::Value::String(alg)) if alg.parse::<Algorithm>().is_err() => {
            AuthError::Invalid(
                "algorithm is not supported; tokens must use EdDSA (alg none is never accepted)"
                    .to_owned(),
            )
        }
        Some(_) => AuthError::Malformed("header fields have the wrong types".to_owned()),
    }
}

fn map_decode_error(error: JwtError) -> AuthError {
    let invalid = |reason: &str| AuthError::Invalid(reason.to_owned());
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => invalid("issuer is not accepted"),
        ErrorKind::InvalidAudience => invalid("tokens with an audience are not accepted"),
        ErrorKind::ImmatureSignature => invalid("token is not valid yet (nbf)"),
        ErrorKind::InvalidAlgorithm => invalid("tokens must use EdDSA"),
        // Claim names come from our own required list / a fixed set, never from the token.
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Invalid(format!("missing required claim {claim}"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Invalid(format!("claim {claim} has the wrong type"))
        }
        ErrorKind::Json(json) => {
            // serde's "missing field `x`" names our field; other messages may quote token values.
            let message = json.to_string();
            match message.split_once(" at line ") {
                Some((head, _)) if head.starts_with("missing field") => {
                    AuthError::Invalid(format!("claims: {head}"))
                }
                _ => invalid("claims do not have the expected fields and types"),
            }
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("not a compact JWS of three base64url segments".to_owned())
        }
        _ => invalid("token was rejected"),
    }
}

// ---------------------------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------------------------

fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    // Best effort: SigningKey zeroizes itself on drop, the stack copy is ours to clear.
    seed.fill(0);
    Ok(key)
}

fn read_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    read_private_key_if_present(path)?.ok_or_else(|| KeyError::Read {
        path: path.to_owned(),
        error: io::Error::from(io::ErrorKind::NotFound),
    })
}

fn read_private_key_if_present(path: &Path) -> Result<Option<SigningKey>, KeyError> {
    let pem = match fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(KeyError::Read {
                path: path.to_owned(),
                error,
            });
        }
    };
    warn_if_readable_by_others(path);
    SigningKey::from_pkcs8_pem(&pem)
        .map(Some)
        .map_err(|e| KeyError::BadPrivateKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: path.to_owned(),
        error,
    })?;
    let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::BadPublicKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // A small-order key lets one signature verify for many messages under non-strict checking.
    if key.is_weak() {
        return Err(KeyError::BadPublicKey {
            path: path.to_owned(),
            reason: "weak (small-order) key".to_owned(),
        });
    }
    Ok(key)
}

/// Writes a new key to a private temp file and hard-links it into place: the link fails if the
/// key already exists, so two processes starting together (serve + token) never clobber each
/// other or read a half-written file; the loser loads the winner's key.
fn create_private_key(dir: &Path, path: &Path) -> Result<(SigningKey, KeyOrigin), KeyError> {
    create_private_dir(dir)?;
    let key = generate_signing_key()?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;

    let tmp = dir.join(format!(".{DEFAULT_KEY_FILE}.{}.tmp", std::process::id()));
    let write_err = |error| KeyError::Write {
        path: path.to_owned(),
        error,
    };
    // A stale temp file from a crashed run of the same pid may have other permissions.
    if let Err(error) = fs::remove_file(&tmp)
        && error.kind() != io::ErrorKind::NotFound
    {
        return Err(write_err(error));
    }
    let linked = write_private_file(&tmp, pem.as_bytes()).and_then(|()| fs::hard_link(&tmp, path));
    // The temp name is only a staging area; failing to remove it is harmless.
    let _ = fs::remove_file(&tmp);
    let published = match linked {
        // Filesystems without hard links: create_new on the final name still never clobbers.
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
            write_private_file(path, pem.as_bytes())
        }
        other => other,
    };
    match published {
        Ok(()) => Ok((key, KeyOrigin::Created(path.to_owned()))),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            Ok((read_private_key(path)?, KeyOrigin::Loaded(path.to_owned())))
        }
        Err(error) => Err(write_err(error)),
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if written.is_err() {
        // Never leave a truncated key behind for the next run to choke on.
        let _ = fs::remove_file(path);
    }
    written
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|error| KeyError::CreateDir {
        path: dir.to_owned(),
        error,
    })
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "token signing key is accessible to other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

// ---------------------------------------------------------------------------------------------
// TTL parsing
// ---------------------------------------------------------------------------------------------

/// Parses a token lifetime such as `90s`, `15m`, `1h`, `12h` or `7d` (for `relay token --ttl`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let usage = "expected a positive number followed by s, m, h or d (e.g. 90s, 15m, 1h, 7d)";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("invalid TTL {s:?}: {usage}"));
    }
    let unit_seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("TTL {s:?} has no unit: {usage}")),
        _ => return Err(format!("TTL {s:?} has an unknown unit: {usage}")),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("TTL {s:?} is too large"))?;
    if value == 0 {
        return Err(format!("TTL {s:?} must be positive"));
    }
    value
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("TTL {s:?} is too large"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "relay-auth-test-{name}-{}-{nanos}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn settings_in(dir: &Path) -> AuthSettings {
        AuthSettings {
            key_dir: dir.join("nested").join("keys"),
            ..AuthSettings::default()
        }
    }

    fn ephemeral() -> KeySet {
        KeySet::generate_ephemeral(&AuthSettings::default()).expect("ephemeral key set")
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn claims(keys: &KeySet, iat: i64, exp: i64) -> Claims {
        Claims {
            sub: "staff-1".into(),
            facility: "9918000010".into(),
            role: Role::Doctor,
            exp,
            iat,
            iss: keys.inner.issuer.clone(),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn claims_b64(keys: &KeySet) -> String {
        let c = claims(keys, now(), now() + 3600);
        b64(&serde_json::to_vec(&c).unwrap())
    }

    #[test]
    fn round_trip_mint_verify() {
        let keys = ephemeral();
        let token = keys
            .mint(
                "staff-42",
                "9948000014",
                Role::Pharmacist,
                Duration::from_secs(3600),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));

        let c = keys.verify(&token).unwrap();
        assert_eq!(c.sub, "staff-42");
        assert_eq!(c.facility, "9948000014");
        assert_eq!(c.role, Role::Pharmacist);
        assert_eq!(c.iss, "relay");
        assert!((c.iat - now()).abs() <= 5, "iat is now");
        assert_eq!(c.exp - c.iat, 3600);
        // The Bearer value may carry stray whitespace from a header.
        assert!(keys.verify(&format!(" {token}\n")).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let keys = ephemeral();
        let token = keys
            .sign(&claims(&keys, now() - 7200, now() - 3600))
            .unwrap();
        assert_eq!(keys.verify(&token).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn recently_expired_token_within_leeway_is_accepted() {
        let keys = ephemeral(); // default leeway 30 s
        let token = keys.sign(&claims(&keys, now() - 600, now() - 5)).unwrap();
        assert!(keys.verify(&token).is_ok());
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let keys = ephemeral();
        let other = ephemeral();
        assert_ne!(keys.kid(), other.kid());
        let token = other
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        assert_eq!(keys.verify(&token).unwrap_err(), AuthError::UnknownKey);

        // Same attack with our kid in the header: the signature must fail.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.kid().to_owned());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(&keys, now(), now() + 60),
            &other.inner.signing,
        )
        .unwrap();
        assert_eq!(keys.verify(&forged).unwrap_err(), AuthError::BadSignature);
    }

    #[test]
    fn tampered_claims_are_refused() {
        let keys = ephemeral();
        let token = keys
            .mint(
                "s",
                "9918000010",
                Role::ClinicClerk,
                Duration::from_secs(60),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims(&keys, now(), now() + 60);
        c.sub = "s".into();
        c.role = Role::Admin;
        let payload = b64(&serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(keys.verify(&tampered).unwrap_err(), AuthError::BadSignature);
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = ephemeral();
        let payload = claims_b64(&keys);
        let plain = format!("eyJhbGciOiJub25lIn0.{payload}.");
        assert!(matches!(keys.verify(&plain), Err(AuthError::Invalid(_))));
        // With our kid and a copied signature, still refused.
        let header = b64(format!(r#"{{"alg":"none","kid":"{}"}}"#, keys.kid()).as_bytes());
        let good = keys
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        let sig = good.rsplit('.').next().unwrap();
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.{sig}"),
        ] {
            assert!(matches!(keys.verify(&token), Err(AuthError::Invalid(_))));
        }
    }

    #[test]
    fn hs256_is_refused_even_keyed_with_the_public_key() {
        let keys = ephemeral();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.kid().to_owned());
        let c = claims(&keys, now(), now() + 60);
        // Classic alg confusion: HMAC with the published public key as the secret.
        let x = keys.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
        let public = URL_SAFE_NO_PAD.decode(&x).unwrap();
        for secret in [public.as_slice(), x.as_bytes(), b"secret".as_slice()] {
            let token =
                jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(secret)).unwrap();
            let err = keys.verify(&token).unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
        }
    }

    #[test]
    fn malformed_input_is_refused_without_panic() {
        let keys = ephemeral();
        let good = keys
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        let mut inputs: Vec<String> = [
            "",
            "   ",
            "abc",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "..",
            "...",
            "e30.e30.",
            "eyJhbGciOiJFZERTQSJ9..",
            "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
            "eyJhbGciOiJFZERTQSIsImtpZCI6MX0.e30.",
            "eyJhbGciOjF9.e30.",
            "ë.ë.ë",
            "\0.\0.\0",
            "aGVsbG8gd29ybGQ",
            "Bearer abc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Random base64 of assorted lengths, with and without dots.
        for len in [1usize, 31, 32, 64, 200] {
            let mut bytes = vec![0u8; len];
            getrandom::fill(&mut bytes).unwrap();
            let s = b64(&bytes);
            inputs.push(s.clone());
            inputs.push(format!("{s}.{s}.{s}"));
        }
        // Our header and kid with garbage or truncated signatures.
        let parts: Vec<&str> = good.split('.').collect();
        inputs.push(format!("{}.{}.", parts[0], parts[1]));
        inputs.push(format!("{}.{}.AAAA", parts[0], parts[1]));
        inputs.push(format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]));
        inputs.push(format!("{}.{}.{}", parts[0], "!!!", parts[2]));
        inputs.push("a".repeat(MAX_TOKEN_BYTES + 1));
        // Every single-character corruption of a valid token.
        for i in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            inputs.push(String::from_utf8(bytes).unwrap());
        }

        for input in &inputs {
            let result = keys.verify(input);
            assert!(result.is_err(), "accepted {input:?}");
        }
        assert_eq!(keys.verify("").unwrap_err(), AuthError::Missing);
        assert!(matches!(keys.verify("abc"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn error_messages_never_echo_the_token() {
        let keys = ephemeral();
        let marker = "ZZTOPSECRETZZ";
        let header = b64(format!(r#"{{"alg":"{marker}","kid":"{marker}"}}"#).as_bytes());
        let tokens = [
            format!("{header}.{marker}.{marker}"),
            format!("{marker}.{marker}.{marker}"),
            marker.to_owned(),
        ];
        for token in tokens {
            let message = keys.verify(&token).unwrap_err().to_string();
            assert!(!message.contains(marker), "{message}");
        }
        // An unknown role inside a properly signed token is not echoed either.
        let payload = serde_json::json!({
            "sub": "s", "facility": "f", "role": marker, "exp": now() + 60, "iat": now(), "iss": "relay"
        });
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(keys.kid().to_owned());
        let token = jsonwebtoken::encode(&h, &payload, &keys.inner.signing).unwrap();
        let err = keys.verify(&token).unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
        assert!(!err.to_string().contains(marker), "{err}");
    }

    #[test]
    fn missing_claims_are_refused() {
        let keys = ephemeral();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(keys.kid().to_owned());
        let payload = serde_json::json!({
            "sub": "s", "role": "doctor", "exp": now() + 60, "iat": now(), "iss": "relay"
        });
        let token = jsonwebtoken::encode(&h, &payload, &keys.inner.signing).unwrap();
        let err = keys.verify(&token).unwrap_err();
        assert!(err.to_string().contains("facility"), "{err}");
        // No exp at all: never a token that lives forever.
        let payload = serde_json::json!({
            "sub": "s", "facility": "f", "role": "doctor", "iat": now(), "iss": "relay"
        });
        let token = jsonwebtoken::encode(&h, &payload, &keys.inner.signing).unwrap();
        assert!(matches!(keys.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let keys = ephemeral();
        let mut c = claims(&keys, now(), now() + 60);
        c.iss = "someone-else".into();
        let token = keys.sign(&c).unwrap();
        assert!(matches!(keys.verify(&token), Err(AuthError::Invalid(_))));

        // A relay configured with another issuer refuses our tokens.
        let dir = TempDir::new("issuer");
        let settings = settings_in(&dir.0);
        let (mine, _) = KeySet::load_or_create(&settings).unwrap();
        let other = AuthSettings {
            issuer: "other".into(),
            ..settings.clone()
        };
        let (theirs, _) = KeySet::load_or_create(&other).unwrap();
        assert_eq!(mine.kid(), theirs.kid());
        let token = mine
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        assert!(mine.verify(&token).is_ok());
        assert!(matches!(theirs.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn key_is_created_on_first_run_and_loaded_on_the_second() {
        let dir = TempDir::new("create");
        let settings = settings_in(&dir.0);
        let expected = settings.key_dir.join(DEFAULT_KEY_FILE);

        let (first, origin) = KeySet::load_or_create(&settings).unwrap();
        assert_eq!(origin, KeyOrigin::Created(expected.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file_mode = fs::metadata(&expected).unwrap().permissions().mode() & 0o777;
            assert_eq!(file_mode, 0o600);
            let dir_mode = fs::metadata(&settings.key_dir)
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
        }
        let pem = fs::read_to_string(&expected).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        // Only the key file is left behind, no staging file.
        assert_eq!(fs::read_dir(&settings.key_dir).unwrap().count(), 1);

        let (second, origin) = KeySet::load_or_create(&settings).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded(expected));
        assert_eq!(first.kid(), second.kid());
        let token = first
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        assert!(second.verify(&token).is_ok());
    }

    #[test]
    fn configured_key_path_must_exist_and_parse() {
        let dir = TempDir::new("configured");
        let missing = dir.0.join("nope.pem");
        let settings = AuthSettings {
            private_key_path: Some(missing.clone()),
            ..settings_in(&dir.0)
        };
        let err = KeySet::load_or_create(&settings).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        assert!(
            !missing.exists(),
            "must not create an explicitly configured key"
        );

        let garbage = dir.0.join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let settings = AuthSettings {
            private_key_path: Some(garbage),
            ..settings
        };
        let err = KeySet::load_or_create(&settings).unwrap_err();
        assert!(matches!(err, KeyError::BadPrivateKey { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let bad_public = dir.0.join("bad-public.pem");
        fs::write(&bad_public, "not a pem").unwrap();
        let settings = AuthSettings {
            extra_public_keys: vec![bad_public],
            ..settings_in(&dir.0)
        };
        let err = KeySet::load_or_create(&settings).unwrap_err();
        assert!(matches!(err, KeyError::BadPublicKey { .. }), "{err:?}");
        assert!(err.to_string().contains("bad-public.pem"), "{err}");
    }

    #[test]
    fn extra_public_key_accepts_tokens_from_the_previous_key() {
        let dir_a = TempDir::new("rotate-a");
        let dir_b = TempDir::new("rotate-b");
        let (old, _) = KeySet::load_or_create(&settings_in(&dir_b.0)).unwrap();
        let old_private = SigningKey::from_pkcs8_pem(
            &fs::read_to_string(settings_in(&dir_b.0).signing_key_path()).unwrap(),
        )
        .unwrap();
        let old_public_path = dir_b.0.join("old-public.pem");
        fs::write(
            &old_public_path,
            old_private
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();

        let token = old
            .mint(
                "s",
                "9948000014",
                Role::PharmacyClerk,
                Duration::from_secs(60),
            )
            .unwrap();
        let (without, _) = KeySet::load_or_create(&settings_in(&dir_a.0)).unwrap();
        assert_eq!(without.verify(&token).unwrap_err(), AuthError::UnknownKey);

        let settings = AuthSettings {
            extra_public_keys: vec![old_public_path],
            ..settings_in(&dir_a.0)
        };
        let (current, origin) = KeySet::load_or_create(&settings).unwrap();
        assert!(matches!(origin, KeyOrigin::Loaded(_)));
        assert_eq!(current.kid(), without.kid());
        let c = current.verify(&token).unwrap();
        assert_eq!(c.role, Role::PharmacyClerk);
        // New tokens are still signed with the current key.
        let fresh = current
            .mint("s", "9918000010", Role::Doctor, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
            Some(current.kid())
        );

        let jwks = current.jwks();
        let entries = jwks["keys"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        let kids: Vec<&str> = entries.iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, [current.kid(), old.kid()]);
        for entry in entries {
            assert_eq!(entry["kty"], "OKP");
            assert_eq!(entry["crv"], "Ed25519");
            assert_eq!(entry["alg"], "EdDSA");
            assert_eq!(entry["use"], "sig");
            let x = URL_SAFE_NO_PAD
                .decode(entry["x"].as_str().unwrap())
                .unwrap();
            assert_eq!(x.len(), 32);
            assert_eq!(jwk_thumbprint(entry["x"].as_str().unwrap()), entry["kid"]);
        }
    }

    #[test]
    fn duplicate_extra_key_is_listed_once() {
        let dir = TempDir::new("dup");
        let settings = settings_in(&dir.0);
        let (keys, _) = KeySet::load_or_create(&settings).unwrap();
        let private =
            SigningKey::from_pkcs8_pem(&fs::read_to_string(settings.signing_key_path()).unwrap())
                .unwrap();
        let public = dir.0.join("self.pem");
        fs::write(
            &public,
            private
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let (again, _) = KeySet::load_or_create(&AuthSettings {
            extra_public_keys: vec![public],
            ..settings
        })
        .unwrap();
        assert_eq!(again.kid(), keys.kid());
        assert_eq!(again.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn kid_matches_rfc8037_thumbprint_vector() {
        // RFC 8037 appendix A.1-A.3.
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let seed: [u8; 32] = d.try_into().unwrap();
        let keys = KeySet::from_keys(
            &SigningKey::from_bytes(&seed),
            &[],
            &AuthSettings::default(),
        )
        .unwrap();
        assert_eq!(keys.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(
            keys.jwks()["keys"][0]["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let keys = ephemeral();
        let debug = format!("{keys:?}");
        let x = keys.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
        assert!(debug.contains(keys.kid()));
        assert!(!debug.contains(&x), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn settings_defaults_apply_to_an_empty_table() {
        let s: AuthSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s.private_key_path, None);
        assert_eq!(s.key_dir, PathBuf::from(".local/keys"));
        assert!(s.extra_public_keys.is_empty());
        assert_eq!(s.issuer, "relay");
        assert_eq!(s.leeway_seconds, 30);
        assert_eq!(
            s.signing_key_path(),
            PathBuf::from(".local/keys/relay-ed25519.pem")
        );
        let s: AuthSettings = serde_json::from_str(r#"{"issuer":"x","leeway_seconds":5}"#).unwrap();
        assert_eq!((s.issuer.as_str(), s.leeway_seconds), ("x", 5));
    }

    #[test]
    fn huge_leeway_is_capped_and_does_not_panic() {
        let keys = KeySet::generate_ephemeral(&AuthSettings {
            leeway_seconds: u64::MAX,
            ..AuthSettings::default()
        })
        .unwrap();
        let token = keys
            .sign(&claims(&keys, now() - 90_000, now() - 86_400))
            .unwrap();
        assert_eq!(keys.verify(&token).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn mint_refuses_overflowing_ttl() {
        let keys = ephemeral();
        let err = keys
            .mint("s", "f", Role::Admin, Duration::from_secs(u64::MAX))
            .unwrap_err();
        assert!(matches!(err, KeyError::TtlTooLarge(_)), "{err:?}");
    }

    #[test]
    fn roles_parse_and_classify() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::String(role.as_str().into())
            );
        }
        let err = "Doctor".parse::<Role>().unwrap_err().to_string();
        for role in Role::ALL {
            assert!(err.contains(role.as_str()), "{err}");
        }
        assert!(Role::Doctor.is_clinic() && Role::ClinicClerk.is_clinic());
        assert!(Role::Pharmacist.is_pharmacy() && Role::PharmacyClerk.is_pharmacy());
        assert!(!Role::Admin.is_clinic() && !Role::Admin.is_pharmacy());
        assert!(!Role::Doctor.is_pharmacy() && !Role::Pharmacist.is_clinic());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "h",
            "1",
            "0h",
            "-1h",
            "1.5h",
            "1w",
            "1hh",
            "h1",
            "1 h",
            "99999999999999999999s",
            "999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "accepted {bad:?}");
        }
    }
}
