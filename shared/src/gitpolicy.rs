//! Which repository URLs Norn clones, and to which hosts it offers its git
//! token. A spec is anyone's input: a `file://` URL would copy the host's
//! files into an image, and a token answered to any host that asks (or over
//! plain http) leaks to whoever runs it.

/// A repository URL by how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    Https {
        host: String,
    },
    /// `http://` or `git://`: no encryption.
    Insecure {
        host: String,
    },
    /// `ssh://` or `user@host:path` (the key, never the token).
    Ssh,
    /// `file://` or a path on the machine.
    Local,
    Unsupported(String),
}

impl RepoUrl {
    pub fn parse(url: &str) -> Self {
        let lower = url.to_ascii_lowercase();
        let host = || host_of(url);
        if lower.starts_with("https://") {
            Self::Https { host: host() }
        } else if lower.starts_with("http://") || lower.starts_with("git://") {
            Self::Insecure { host: host() }
        } else if lower.starts_with("ssh://") || lower.starts_with("git+ssh://") {
            Self::Ssh
        } else if lower.starts_with("file://") || url.starts_with('/') || url.starts_with('.') {
            Self::Local
        } else if !url.contains("://") && url.contains('@') && url.contains(':') {
            Self::Ssh
        } else {
            Self::Unsupported(url.split("://").next().unwrap_or(url).to_owned())
        }
    }
}

/// The host of `scheme://[user@]host[:port]/…`, lowercased, without port.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or(host)
    };
    host.to_ascii_lowercase()
}

/// `NORN_GIT_HOSTS`, `NORN_ALLOW_INSECURE_GIT`, `NORN_ALLOW_LOCAL_REPOS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitPolicy {
    /// Hosts the token may be offered to; empty: the host of the repository
    /// being cloned (when it is https).
    pub hosts: Vec<String>,
    pub allow_insecure: bool,
    pub allow_local: bool,
}

impl GitPolicy {
    /// Why `url` may not be cloned, if it may not.
    pub fn refuse(&self, url: &str) -> Option<String> {
        match RepoUrl::parse(url) {
            RepoUrl::Https { .. } | RepoUrl::Ssh => None,
            RepoUrl::Insecure { .. } if self.allow_insecure => None,
            RepoUrl::Insecure { .. } => Some(
                "unencrypted git (http://, git://) is refused; use https or ssh \
                 (NORN_ALLOW_INSECURE_GIT=true allows it, never with the token)"
                    .into(),
            ),
            RepoUrl::Local if self.allow_local => None,
            RepoUrl::Local => Some(
                "repositories on the Norn machine (file://, paths) are refused \
                 (NORN_ALLOW_LOCAL_REPOS=true allows them)"
                    .into(),
            ),
            RepoUrl::Unsupported(scheme) => Some(format!(
                "{scheme:?} is not a supported repository URL (https, ssh, user@host:path)"
            )),
        }
    }

    /// Whether the token may answer a credential request for `requested`
    /// while cloning `repo`: only over https, only to an allowed host.
    pub fn offers_token(&self, repo: &str, requested: &str) -> bool {
        let RepoUrl::Https { host } = RepoUrl::parse(requested) else {
            return false;
        };
        if self.hosts.is_empty() {
            matches!(RepoUrl::parse(repo), RepoUrl::Https { host: own } if own == host)
        } else {
            self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified_by_how_they_are_reached() {
        let https = |h: &str| RepoUrl::Https { host: h.into() };
        assert_eq!(
            RepoUrl::parse("https://Git.Example.com:8443/a/b.git"),
            https("git.example.com")
        );
        assert_eq!(RepoUrl::parse("https://user:pw@host/x"), https("host"));
        assert_eq!(RepoUrl::parse("https://[::1]:3000/x"), https("::1"));
        assert_eq!(
            RepoUrl::parse("http://host/x"),
            RepoUrl::Insecure {
                host: "host".into()
            }
        );
        assert_eq!(RepoUrl::parse("git@github.com:acme/x.git"), RepoUrl::Ssh);
        assert_eq!(RepoUrl::parse("ssh://git@host/x"), RepoUrl::Ssh);
        assert_eq!(RepoUrl::parse("file:///etc"), RepoUrl::Local);
        assert_eq!(RepoUrl::parse("/root/.ssh"), RepoUrl::Local);
        assert!(matches!(
            RepoUrl::parse("ext::sh -c id"),
            RepoUrl::Unsupported(_)
        ));
    }

    #[test]
    fn the_token_goes_only_over_https_to_the_repositorys_host_or_the_listed_ones() {
        let own = GitPolicy::default();
        let repo = "https://git.example.com/a.git";
        assert!(own.offers_token(repo, "https://git.example.com/a.git/info/refs"));
        assert!(!own.offers_token(repo, "https://evil.example.net/a.git"));
        assert!(!own.offers_token(repo, "http://git.example.com/a.git"));
        assert!(!own.offers_token(
            "http://git.example.com/a.git",
            "http://git.example.com/a.git"
        ));
        let listed = GitPolicy {
            hosts: vec!["forge.internal".into()],
            ..Default::default()
        };
        assert!(!listed.offers_token(repo, "https://git.example.com/a.git"));
        assert!(listed.offers_token("https://forge.internal/x", "https://FORGE.internal/x"));
    }

    #[test]
    fn local_and_insecure_repositories_need_their_flag() {
        let strict = GitPolicy::default();
        assert!(strict.refuse("file:///etc").is_some());
        assert!(strict.refuse("/srv/repo").is_some());
        assert!(strict.refuse("http://host/x").is_some());
        assert!(strict.refuse("ext::sh -c id").is_some());
        assert!(strict.refuse("https://host/x").is_none());
        let lax = GitPolicy {
            allow_insecure: true,
            allow_local: true,
            ..Default::default()
        };
        assert!(lax.refuse("file:///srv/x").is_none());
        assert!(lax.refuse("http://host/x").is_none());
    }
}
