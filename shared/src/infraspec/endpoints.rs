//! `endpoints`: the public hostnames an app answers on. Each becomes an
//! ingress route to the app, one app per hostname (claimed at
//! registration), and a cloudflared ingress rule when Norn manages one.

use serde::{Deserialize, Serialize};

use super::validate::Errors;

/// At most this many endpoints per app.
pub const MAX_ENDPOINTS: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub url: Option<String>,
    pub region: Option<String>,
}

/// One endpoint: `url` normalised to its bare, lower-case hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `https://Shop.Example.com:443/x` → `shop.example.com`; `None` when what
/// is left is not a DNS hostname (letters, digits, `-`, dots between labels
/// of 1..63, 253 in all, at least two labels).
pub fn hostname(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let valid = host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    valid.then_some(host)
}

pub(super) fn endpoints(raw: Vec<RawEndpoint>, errors: &mut Errors) -> Vec<Endpoint> {
    if raw.len() > MAX_ENDPOINTS {
        errors.push(
            "endpoints",
            format!("at most {MAX_ENDPOINTS} endpoints (got {})", raw.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<Endpoint> = Vec::new();
    for (i, e) in raw.into_iter().enumerate() {
        let field = format!("endpoints[{i}].url");
        let Some(url) = e.url.filter(|u| !u.trim().is_empty()) else {
            errors.push(field, "is required");
            continue;
        };
        let Some(hostname) = hostname(url.trim()) else {
            errors.push(
                field,
                "must be a hostname or an http(s) URL of one (like https://shop.example.com)",
            );
            continue;
        };
        if out.iter().any(|o| o.hostname == hostname) {
            errors.push(field, format!("{hostname} is listed twice"));
            continue;
        }
        let region = e.region.filter(|r| !r.is_empty());
        if region.as_ref().is_some_and(|r| r.len() > 63) {
            errors.push(format!("endpoints[{i}].region"), "must be at most 63 bytes");
            continue;
        }
        out.push(Endpoint { hostname, region });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hostname;

    #[test]
    fn urls_are_reduced_to_their_lower_case_hostname_and_junk_is_refused() {
        assert_eq!(
            hostname("https://Shop.Example.com:443/x?y").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            hostname("api.example.com.").as_deref(),
            Some("api.example.com")
        );
        for bad in [
            "localhost",
            "https://",
            "https://-a.example.com",
            "https://a_b.example.com",
            "https://*.example.com",
            "https://a..example.com",
            "https://user@host.example.com",
        ] {
            assert_eq!(hostname(bad), None, "{bad}");
        }
        assert_eq!(hostname(&format!("{}.com", "a".repeat(64))), None);
    }
}
