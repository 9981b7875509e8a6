//! Values Norn keeps for apps (service passwords, later app secrets) are
//! sealed with AES-256-GCM before they reach the database. Each sealed value
//! names the key it was sealed with (`key_id`), so a key rotation can find
//! and re-seal what the old key sealed.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "no secret key: set NORN_SECRET_KEY (32 bytes, base64 or hex) or NORN_SECRET_KEY_FILE \
         (`norn up` keeps one under its state directory)"
    )]
    NoKey,
    #[error("the secret key {0}")]
    BadKey(String),
    #[error("value sealed with key {found}, but this process has key {have}")]
    WrongKey { found: String, have: String },
    #[error("a sealed value could not be opened (corrupt, or sealed with another key)")]
    Corrupt,
}

/// The key values are sealed with. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// A sealed value as stored: the id of its key and `base64(nonce ‖ ciphertext)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub data: String,
}

impl SecretKey {
    /// Parses 32 bytes given as base64 or 64 hex characters.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| CryptoError::BadKey(e.to_string()))?
        } else {
            B64.decode(text).map_err(|_| {
                CryptoError::BadKey("is neither base64 nor 64 hex characters".into())
            })?
        };
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey(format!(
                "must be 32 bytes (got {})",
                bytes.len()
            )));
        }
        let digest = Sha256::digest(bytes);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = Aes256Gcm::new_from_slice(bytes)
            .map_err(|_| CryptoError::BadKey("must be 32 bytes".into()))?;
        Ok(Self { id, cipher })
    }

    /// A fresh random key, as base64 (what `norn up` writes to its key file).
    pub fn generate() -> String {
        B64.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// The key's public name: the first 8 bytes of its SHA-256, in hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, plaintext: &str) -> Result<Sealed, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| CryptoError::Corrupt)?;
        let mut data = nonce.to_vec();
        data.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: self.id.clone(),
            data: B64.encode(data),
        })
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String, CryptoError> {
        if sealed.key_id != self.id {
            return Err(CryptoError::WrongKey {
                found: sealed.key_id.clone(),
                have: self.id.clone(),
            });
        }
        let data = B64.decode(&sealed.data).map_err(|_| CryptoError::Corrupt)?;
        if data.len() < 12 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = data.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| CryptoError::Corrupt)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)
    }
}

/// A random password of 32 hex characters (128 bits): only characters that
/// need no escaping in a URL, a shell or a Postgres literal.
pub fn random_password() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A webhook secret for an app: 256 random bits, in hex (forges take any
/// printable text).
pub fn random_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The prefix of every API token Norn makes: a leaked one is recognisable
/// (secret scanners), and it is never mistaken for another credential.
pub const TOKEN_PREFIX: &str = "norn_";

/// A new API token: the prefix and 256 random bits (base64url).
pub fn new_api_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of an API token: its SHA-256. The token carries 256
/// random bits, so a slow hash would add nothing.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What Postgres stores for a SCRAM-SHA-256 password (RFC 5802/7677, the
/// format of `pg_authid.rolpassword`), made here so that `CREATE ROLE … PASSWORD`
/// carries only the verifier: the password itself never reaches the server,
/// its logs or `pg_stat_activity`. `password` must be ASCII without control
/// characters (SASLprep leaves it unchanged), as `random_password`'s are.
pub fn scram_sha256_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    scram_sha256_verifier_with(password, &salt, SCRAM_ITERATIONS)
}

/// Postgres's default `scram_iterations`.
const SCRAM_ITERATIONS: u32 = 4096;

fn scram_sha256_verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<Sha256>;
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let keyed = |label: &[u8]| {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&salted)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label);
        mac.finalize().into_bytes()
    };
    let client_key = keyed(b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = keyed(b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scram_verifier_matches_an_independent_computation() {
        // Computed with Python's hashlib/hmac for password "pencil", salt
        // bytes 0..16, 4096 iterations.
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            scram_sha256_verifier_with("pencil", &salt, 4096),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$\
             zHCdol2044/ZyWzPLi7oxApCkamKw9Z+E4U/QApd/5Y=:\
             dd5peBOitVnLNFu7VmwP+HiDaaw4OUCv396eVCWhYiE="
        );
        let a = scram_sha256_verifier("pencil");
        assert!(a.starts_with("SCRAM-SHA-256$4096:"), "{a}");
        assert_ne!(a, scram_sha256_verifier("pencil"), "the salt is random");
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let sealed = key.seal("hunter2-password").unwrap();
        assert!(!sealed.data.contains("hunter2"));
        assert_eq!(sealed.key_id, key.id());
        assert_eq!(key.open(&sealed).unwrap(), "hunter2-password");
        // Two seals of one value differ (fresh nonce).
        assert_ne!(key.seal("hunter2-password").unwrap().data, sealed.data);

        let other = SecretKey::parse(&"ab".repeat(32)).unwrap();
        assert!(matches!(
            other.open(&sealed),
            Err(CryptoError::WrongKey { .. })
        ));
        let forged = Sealed {
            key_id: other.id().to_owned(),
            data: sealed.data.clone(),
        };
        assert!(matches!(other.open(&forged), Err(CryptoError::Corrupt)));
        let mut tampered = B64.decode(&sealed.data).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = Sealed {
            key_id: sealed.key_id.clone(),
            data: B64.encode(tampered),
        };
        assert!(matches!(key.open(&tampered), Err(CryptoError::Corrupt)));
    }

    #[test]
    fn keys_of_the_wrong_size_or_encoding_are_refused() {
        assert!(SecretKey::parse("short").is_err());
        assert!(SecretKey::parse(&B64.encode([0u8; 16])).is_err());
        assert!(SecretKey::parse(&"zz".repeat(32)).is_err());
        assert!(
            format!("{:?}", SecretKey::parse(&"ab".repeat(32)).unwrap()).starts_with("SecretKey(")
        );
    }

    #[test]
    fn passwords_are_random_hex() {
        let (a, b) = (random_password(), random_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
