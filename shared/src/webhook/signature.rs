//! Is a delivery signed with the secret Norn holds? GitHub and Gitea send
//! an HMAC-SHA256 of the body (GitHub as `sha256=<hex>`, Gitea as bare hex);
//! GitLab sends the secret itself as a token. Every comparison is
//! constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Provider;
use crate::crypto::constant_time_eq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the delivery is not signed (no {0} header)")]
    Unsigned(&'static str),
    #[error("the {0} header is not a signature Norn can read")]
    Malformed(&'static str),
    #[error("the signature does not match the webhook secret")]
    Mismatch,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac
}

/// `sha256=<hex>`, as GitHub signs `body` with `secret` (tests and tools).
pub fn sign_github(secret: &str, body: &[u8]) -> String {
    let tag = mac(secret, body).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Checks the signature header `presented` (absent: unsigned) of a
/// `provider` delivery against `secret`.
pub fn verify(
    provider: Provider,
    secret: &str,
    presented: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = provider.signature_header();
    let presented = presented
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or(SignatureError::Unsigned(header))?;
    match provider {
        Provider::Gitlab => {
            if constant_time_eq(presented.as_bytes(), secret.as_bytes()) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
        Provider::Github | Provider::Gitea => {
            let hex = match provider {
                Provider::Github => presented
                    .strip_prefix("sha256=")
                    .ok_or(SignatureError::Malformed(header))?,
                _ => presented,
            };
            let tag = unhex(hex).ok_or(SignatureError::Malformed(header))?;
            // `verify_slice` compares in constant time.
            mac(secret, body)
                .verify_slice(&tag)
                .map_err(|_| SignatureError::Mismatch)
        }
    }
}
