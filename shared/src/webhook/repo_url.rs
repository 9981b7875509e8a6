//! One key per repository, whatever form its URL takes: a forge's payload
//! gives `https://host/org/repo.git`, `git@host:org/repo.git`,
//! `ssh://git@host:22/org/repo` and its web address, and an app's spec
//! names one of them. All reduce to `host/org/repo`, lower-cased (forges
//! treat repository paths case-insensitively).

/// The repository `url` names, as `host/path`; `None` when it names none.
pub fn key(url: &str) -> Option<String> {
    let url = url.trim();
    let (rest, had_scheme) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme == "file" {
                return local(rest);
            }
            if !matches!(
                scheme.as_str(),
                "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git"
            ) {
                return None;
            }
            (rest, true)
        }
        None if url.starts_with('/') => return local(url),
        None => (url, false),
    };
    // Credentials are never part of the repository's name.
    let (authority, path) = if had_scheme {
        rest.split_once('/')?
    } else {
        // scp-like: `[user@]host:path`.
        rest.split_once(':')?
    };
    let host = authority.rsplit('@').next()?;
    // A port says how to reach the host, not which repository it is.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let path = trim_path(path);
    if host.is_empty() || path.is_empty() {
        return None;
    }
    Some(format!("{host}/{path}").to_ascii_lowercase())
}

fn trim_path(path: &str) -> &str {
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    path.trim_end_matches('/')
}

/// A repository on this machine (tests, a mirror): its path, exactly
/// (local paths are case-sensitive).
fn local(path: &str) -> Option<String> {
    let path = trim_path(path);
    (!path.is_empty()).then(|| format!("/{path}"))
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn every_usual_form_of_a_repository_url_has_one_key() {
        let forms = [
            "https://github.com/Acme/Ledger",
            "https://github.com/acme/ledger.git",
            "https://github.com/acme/ledger/",
            "http://GitHub.com/acme/ledger.git",
            "https://x-access-token:abc@github.com/acme/ledger.git",
            "git@github.com:acme/ledger.git",
            "git@github.com:Acme/Ledger",
            "ssh://git@github.com/acme/ledger.git",
            "ssh://git@github.com:22/acme/ledger",
            "git://github.com/acme/ledger.git",
        ];
        for f in forms {
            assert_eq!(key(f).as_deref(), Some("github.com/acme/ledger"), "{f}");
        }
        // Subgroups (GitLab) keep their depth.
        assert_eq!(
            key("git@gitlab.example:Group/Sub/App.git").as_deref(),
            Some("gitlab.example/group/sub/app")
        );
    }

    #[test]
    fn different_repositories_do_not_share_a_key() {
        assert_ne!(
            key("https://github.com/acme/ledger"),
            key("https://github.com/acme/ledger-ui")
        );
        assert_ne!(
            key("https://github.com/acme/ledger"),
            key("https://gitlab.com/acme/ledger")
        );
        assert_ne!(
            key("https://github.com/acme/ledger"),
            key("https://github.com/other/ledger")
        );
    }

    #[test]
    fn local_paths_keep_their_case_and_other_schemes_name_nothing() {
        assert_eq!(key("file:///tmp/Repo/").as_deref(), Some("/tmp/Repo"));
        assert_eq!(key("/tmp/Repo.git").as_deref(), Some("/tmp/Repo"));
        assert_eq!(key("ftp://host/repo"), None);
        assert_eq!(key("not a url"), None);
        assert_eq!(key(""), None);
        assert_eq!(key("https://host"), None);
    }
}
