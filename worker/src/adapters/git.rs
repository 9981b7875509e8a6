//! `Source` on git2: clone over https (token), ssh (key), `file://` or a local
//! path, then check out a branch, tag or SHA detached.

use std::path::{Path, PathBuf};

use git2::build::RepoBuilder;
use git2::{Cred, FetchOptions, Oid, RemoteCallbacks, Repository};
use norn_shared::config::Secret;
use norn_shared::gitpolicy::GitPolicy;

use super::{Checkout, FetchRequest, Source, SourceError};

#[derive(Clone, Default)]
pub struct GitSource {
    pub token: Option<Secret>,
    pub ssh_key: Option<PathBuf>,
    pub policy: GitPolicy,
}

impl GitSource {
    /// Credentials for a clone of `repo`: the ssh key, or the token — the
    /// latter only when the policy says the asking URL may have it.
    fn callbacks<'a>(&'a self, repo: &'a str) -> RemoteCallbacks<'a> {
        let mut cb = RemoteCallbacks::new();
        let mut tries = 0;
        cb.credentials(move |url, username, allowed| {
            // libgit2 asks again after a rejected credential; stop instead of looping.
            tries += 1;
            if tries > 3 {
                return Err(git2::Error::from_str("authentication failed"));
            }
            if allowed.contains(git2::CredentialType::SSH_KEY)
                && let Some(key) = &self.ssh_key
            {
                return Cred::ssh_key(username.unwrap_or("git"), None, key, None);
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(token) = &self.token
                && self.policy.offers_token(repo, url)
            {
                return Cred::userpass_plaintext("x-access-token", token.expose());
            }
            Err(git2::Error::from_str(
                "the server asked for credentials Norn does not offer it (see NORN_GIT_HOSTS)",
            ))
        });
        cb
    }

    fn clone_at(
        &self,
        req: &FetchRequest,
        url: &str,
        dest: &Path,
    ) -> Result<Checkout, SourceError> {
        if let Some(why) = self.policy.refuse(url) {
            return Err(SourceError::Clone(format!("{url}: {why}")));
        }
        let mut fetch = FetchOptions::new();
        fetch.remote_callbacks(self.callbacks(url));
        fetch.download_tags(git2::AutotagOption::All);
        let repo = RepoBuilder::new()
            .fetch_options(fetch)
            .clone(url, dest)
            .map_err(|e| SourceError::Clone(format!("cloning {url}: {}", e.message())))?;
        let oid = resolve(&repo, req.git_ref.as_str(), req.default_branch.as_deref())?;
        let commit = repo
            .find_commit(oid)
            .map_err(|e| SourceError::Ref(format!("{}: {}", req.git_ref, e.message())))?;
        repo.checkout_tree(
            commit.as_object(),
            Some(git2::build::CheckoutBuilder::new().force()),
        )
        .and_then(|_| repo.set_head_detached(oid))
        .map_err(|e| SourceError::Clone(format!("checking out {oid}: {}", e.message())))?;
        let sha = oid.to_string();
        Ok(Checkout {
            description: format!("cloned {url} ({}) at {}", req.git_ref, &sha[..12]),
            sha,
        })
    }
}

/// `HEAD` means the tip of the app's branch (or the remote's default branch);
/// otherwise a branch, then a tag, then a (possibly abbreviated) SHA.
fn resolve(
    repo: &Repository,
    git_ref: &str,
    default_branch: Option<&str>,
) -> Result<Oid, SourceError> {
    let candidates: Vec<String> = if git_ref == "HEAD" {
        match default_branch {
            Some(b) => vec![format!("refs/remotes/origin/{b}"), "HEAD".into()],
            None => vec!["HEAD".into()],
        }
    } else {
        vec![
            format!("refs/remotes/origin/{git_ref}"),
            format!("refs/tags/{git_ref}"),
            git_ref.to_owned(),
        ]
    };
    for candidate in &candidates {
        if let Ok(obj) = repo.revparse_single(candidate)
            && let Ok(commit) = obj.peel_to_commit()
        {
            return Ok(commit.id());
        }
    }
    Err(SourceError::Ref(format!(
        "{git_ref:?} is not a branch, tag or commit of the repository"
    )))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let target = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A directory that is not a git repository is identified by its content:
/// a git-style hash over every path, mode and file hash, sorted. The same
/// content gives the same id (and image tag); any change gives a new one, so
/// a rollback gets the old content back.
fn content_id(dir: &Path) -> std::io::Result<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_symlink() {
                out.push(format!("l {rel} {}", std::fs::read_link(&path)?.display()));
            } else {
                use std::os::unix::fs::PermissionsExt;
                let mode = entry.metadata()?.permissions().mode() & 0o111;
                let blob = git2::Oid::hash_object(git2::ObjectType::Blob, &std::fs::read(&path)?)
                    .map_err(std::io::Error::other)?;
                out.push(format!("f {rel} {mode:o} {blob}"));
            }
        }
        Ok(())
    }
    let mut lines = Vec::new();
    walk(dir, dir, &mut lines)?;
    lines.sort();
    git2::Oid::hash_object(git2::ObjectType::Blob, lines.join("\n").as_bytes())
        .map(|oid| oid.to_string())
        .map_err(std::io::Error::other)
}

impl Source for GitSource {
    fn fetch(&self, req: &FetchRequest, dest: &Path) -> Result<Checkout, SourceError> {
        if let Some(url) = &req.repo_url {
            return self.clone_at(req, url, dest);
        }
        let Some(dir) = &req.local_dir else {
            return Err(SourceError::Clone(
                "the app has neither repo.url nor a directory under NORN_APPS_DIR".into(),
            ));
        };
        copy_dir(dir, dest)
            .map_err(|e| SourceError::Clone(format!("copying {}: {e}", dir.display())))?;
        // A local directory that is itself a git repository has a real SHA.
        let sha = Repository::open(dir)
            .ok()
            .and_then(|r| r.head().ok().and_then(|h| h.target()))
            .map(|oid| oid.to_string())
            .map_or_else(|| content_id(dest), |oid| Ok(oid.to_string()))
            .map_err(|e| SourceError::Clone(format!("hashing {}: {e}", dir.display())))?;
        Ok(Checkout {
            description: format!("copied {} at {}", dir.display(), &sha[..12.min(sha.len())]),
            sha,
        })
    }
}
