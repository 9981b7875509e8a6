use std::fmt;

use serde::{Deserialize, Serialize};

/// An app id: `^[a-z0-9][a-z0-9-]*$`, at most 63 characters so it fits a DNS
/// label and a container name prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > 63 {
            return Err("must be at most 63 characters".into());
        }
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !(first_ok && rest_ok) {
            return Err(format!(
                "{raw:?} must match ^[a-z0-9][a-z0-9-]*$ (lowercase letters, digits, dashes)"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        AppName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AppName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(AppName::parse("web-1").is_ok());
        assert!(AppName::parse("0app").is_ok());
        for bad in ["", "-x", "Web", "a_b", "a.b", "a b", &"a".repeat(64)] {
            assert!(AppName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
