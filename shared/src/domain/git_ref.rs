use std::fmt;

use serde::{Deserialize, Serialize};

/// What to deploy: a branch, a tag, a commit SHA or `HEAD`. Validated so that
/// it can never be read as an option or a path escape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GitRef(String);

impl GitRef {
    pub fn head() -> Self {
        Self("HEAD".into())
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Self::head());
        }
        let bad = raw.starts_with('-')
            || raw.starts_with('/')
            || raw.ends_with('/')
            || raw.ends_with(".lock")
            || raw.contains("..")
            || raw.contains("//")
            || raw.contains("@{")
            || raw.len() > 255
            || raw
                .chars()
                .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
        if bad {
            return Err(format!("{raw:?} is not a valid branch, tag or commit"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert_eq!(GitRef::parse("").unwrap().as_str(), "HEAD");
        assert!(GitRef::parse("feature/x").is_ok());
        assert!(GitRef::parse("v1.2.3").is_ok());
        assert!(GitRef::parse("--upload-pack=x").is_err());
        assert!(GitRef::parse("a..b").is_err());
        assert!(GitRef::parse("a b").is_err());
    }
}
