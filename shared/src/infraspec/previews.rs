//! `previews`: every open pull (merge) request of the app's repository
//! deployed as an app of its own, `<app>-pr-<n>`, until it closes, goes
//! idle past `ttl`, or newer ones push it past `max`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::Scalar;
use super::validate::Errors;
use crate::domain::parse_duration;

/// At most this many previews of one app at once.
pub const MAX_PREVIEWS: u32 = 20;
/// The longest a preview may sit idle.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPreviews {
    #[serde(default)]
    pub enabled: bool,
    pub ttl: Option<Scalar>,
    pub max: Option<i64>,
    pub secrets: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Previews {
    /// Torn down when no commit has been pushed to it for this long.
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub ttl: Duration,
    /// Open previews at most; the one idle longest goes first.
    pub max: u32,
    /// The app's secrets a preview gets; `None`: all of them. A pull
    /// request's code is less trusted than the branch it wants to join.
    pub secrets: Option<Vec<String>>,
}

mod secs {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        text.strip_suffix('s')
            .and_then(|n| n.parse::<u64>().ok())
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("expected a duration like \"60s\", got {text:?}"))
            })
    }
}

/// `Some` when previews are enabled.
pub(super) fn previews(
    raw: Option<RawPreviews>,
    has_repo: bool,
    app_secrets: &[String],
    errors: &mut Errors,
) -> Option<Previews> {
    let raw = raw.filter(|r| r.enabled)?;
    if !has_repo {
        errors.push(
            "previews",
            "previews need a repo (pull requests come from it)",
        );
    }
    let ttl = match raw.ttl.map(Scalar::into_string) {
        None => Duration::from_secs(72 * 3600),
        Some(text) => match parse_duration(&text) {
            Ok(d) if d >= Duration::from_secs(60) && d <= MAX_TTL => d,
            Ok(_) => {
                errors.push("previews.ttl", "must be 1m..720h");
                Duration::from_secs(72 * 3600)
            }
            Err(e) => {
                errors.push("previews.ttl", e);
                Duration::from_secs(72 * 3600)
            }
        },
    };
    let max = raw.max.unwrap_or(5);
    if !(1..=i64::from(MAX_PREVIEWS)).contains(&max) {
        errors.push("previews.max", format!("must be 1..{MAX_PREVIEWS}"));
    }
    if let Some(names) = &raw.secrets {
        for (i, name) in names.iter().enumerate() {
            if !app_secrets.contains(name) {
                errors.push(
                    format!("previews.secrets[{i}]"),
                    format!("{name} is not one of the app's secrets"),
                );
            }
        }
    }
    Some(Previews {
        ttl,
        max: max.clamp(1, i64::from(MAX_PREVIEWS)) as u32,
        secrets: raw.secrets,
    })
}
