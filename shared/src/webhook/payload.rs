//! Each forge's payload shapes, read into one [`Change`]. Only the fields
//! Norn acts on are read; everything else in a payload is ignored, and
//! every string kept is bounded.

use serde::Deserialize;

use super::{Change, Delivery, Provider, PullAction};

/// Longest delivery id kept from a header (GitHub's are 36-character GUIDs).
const MAX_DELIVERY_ID: usize = 128;
/// Longest event name kept.
const MAX_EVENT: usize = 64;
/// Longest ref, URL or commit id kept from a payload.
const MAX_FIELD: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("the payload is not the JSON this event should carry: {0}")]
    Payload(String),
    #[error("the payload names no repository")]
    NoRepository,
}

#[derive(Deserialize, Default)]
struct Repository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    html_url: Option<String>,
    // GitLab's `project` and `repository`.
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
    url: Option<String>,
    homepage: Option<String>,
}

impl Repository {
    fn urls(self) -> Vec<String> {
        [
            self.clone_url,
            self.ssh_url,
            self.git_url,
            self.html_url,
            self.git_http_url,
            self.git_ssh_url,
            self.web_url,
            self.url,
            self.homepage,
        ]
        .into_iter()
        .flatten()
        .filter(|u| !u.is_empty() && u.len() <= MAX_FIELD)
        .collect()
    }
}

/// A push, in the fields GitHub, Gitea and GitLab share (GitLab has no
/// `created`/`deleted`/`forced`: a zero `before`/`after` says it).
#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
}

#[derive(Deserialize)]
struct RepoId {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    sha: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
    /// `null` when the fork it came from was deleted.
    repo: Option<RepoId>,
    /// Gitea also gives the repository's id.
    repo_id: Option<i64>,
}

#[derive(Deserialize)]
struct Base {
    repo: Option<RepoId>,
    repo_id: Option<i64>,
}

#[derive(Deserialize)]
struct PullRequest {
    head: Head,
    base: Option<Base>,
    #[serde(default)]
    merged: bool,
}

impl PullRequest {
    /// Whether the head is in another repository than the base. Only
    /// what the payload proves is the same repository counts as not a fork.
    fn is_from_fork(&self) -> bool {
        let Some(base) = &self.base else { return true };
        let name = |r: &Option<RepoId>| {
            r.as_ref()
                .and_then(|r| r.full_name.as_deref().map(str::to_ascii_lowercase))
        };
        match (name(&self.head.repo), name(&base.repo)) {
            (Some(head), Some(base)) => head != base,
            _ => match (self.head.repo_id, base.repo_id) {
                (Some(head), Some(base)) => head != base,
                _ => true,
            },
        }
    }
}

/// GitHub's and Gitea's `pull_request` event.
#[derive(Deserialize)]
struct PullEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}

#[derive(Deserialize)]
struct MergeAttributes {
    iid: u64,
    #[serde(default)]
    action: String,
    last_commit: LastCommit,
    #[serde(default)]
    source_branch: String,
    #[serde(default)]
    oldrev: Option<String>,
    source_project_id: Option<i64>,
    target_project_id: Option<i64>,
}

/// GitLab's `Merge Request Hook`.
#[derive(Deserialize)]
struct MergeEvent {
    object_attributes: MergeAttributes,
}

fn bad(e: serde_json::Error) -> ParseError {
    ParseError::Payload(e.to_string())
}

fn zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

fn bounded(s: String) -> Result<String, ParseError> {
    if s.len() > MAX_FIELD {
        return Err(ParseError::Payload(format!(
            "a field is over {MAX_FIELD} bytes"
        )));
    }
    Ok(s)
}

fn push(p: Push) -> Result<Change, ParseError> {
    let git_ref = bounded(p.git_ref)?;
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        return Ok(Change::TagPush { tag: tag.into() });
    }
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return Err(ParseError::Payload(format!(
            "ref {git_ref:?} is neither a branch nor a tag"
        )));
    };
    if p.deleted || zero(&p.after) {
        return Ok(Change::BranchDeleted {
            branch: branch.into(),
        });
    }
    Ok(Change::Push {
        branch: branch.into(),
        created: p.created || zero(&p.before),
        before: bounded(p.before)?,
        after: bounded(p.after)?,
        forced: p.forced,
    })
}

/// A pull request's number, as forges number them (1, 2, …).
fn pull_number(n: u64) -> Result<u64, ParseError> {
    if (1..=MAX_PULL_NUMBER).contains(&n) {
        Ok(n)
    } else {
        Err(ParseError::Payload(format!(
            "pull request number {n} is out of range"
        )))
    }
}

/// Far beyond any forge's count, and small enough for every column.
const MAX_PULL_NUMBER: u64 = 1_000_000_000;

fn pull_action(action: &str, merged: bool) -> PullAction {
    match action {
        "opened" | "open" => PullAction::Opened,
        "reopened" | "reopen" => PullAction::Reopened,
        "synchronize" | "synchronized" | "update" => PullAction::Updated,
        "closed" | "close" if merged => PullAction::Merged,
        "closed" | "close" => PullAction::Closed,
        "merge" => PullAction::Merged,
        other => PullAction::Other(other.chars().take(MAX_EVENT).collect()),
    }
}

/// The change a GitHub or Gitea delivery describes.
fn github_like(event: &str, body: &serde_json::Value) -> Result<Change, ParseError> {
    Ok(match event {
        "push" => push(Push::deserialize(body).map_err(bad)?)?,
        "pull_request" => {
            let e = PullEvent::deserialize(body).map_err(bad)?;
            Change::PullRequest {
                number: pull_number(e.number)?,
                action: pull_action(&e.action, e.pull_request.merged),
                from_fork: e.pull_request.is_from_fork(),
                head_sha: bounded(e.pull_request.head.sha)?,
                head_branch: bounded(e.pull_request.head.git_ref)?,
            }
        }
        // Gitea announces a deleted branch or tag as a `delete` event.
        "delete" if body["ref_type"] == "branch" => Change::BranchDeleted {
            branch: bounded(body["ref"].as_str().unwrap_or_default().to_owned())?,
        },
        "ping" => Change::Ping,
        _ => Change::Other,
    })
}

fn gitlab(event: &str, body: &serde_json::Value) -> Result<Change, ParseError> {
    Ok(match event {
        "Push Hook" | "Tag Push Hook" => push(Push::deserialize(body).map_err(bad)?)?,
        "Merge Request Hook" => {
            let a = MergeEvent::deserialize(body)
                .map_err(bad)?
                .object_attributes;
            // An `update` that moved no commit (a title edit) is not new code.
            let moved = a.oldrev.as_deref().is_some_and(|r| !r.is_empty());
            let action = match a.action.as_str() {
                "update" if !moved => PullAction::Other("update".into()),
                other => pull_action(other, false),
            };
            let from_fork = match (a.source_project_id, a.target_project_id) {
                (Some(source), Some(target)) => source != target,
                _ => true,
            };
            Change::PullRequest {
                number: pull_number(a.iid)?,
                action,
                from_fork,
                head_sha: bounded(a.last_commit.id)?,
                head_branch: bounded(a.source_branch)?,
            }
        }
        _ => Change::Other,
    })
}

fn header<'a>(headers: &'a http::HeaderMap, name: &'static str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The delivery id: the forge's (bounded, printable), or else the body's
/// SHA-256, which a redelivery of the same body repeats.
pub fn delivery_id(provider: Provider, headers: &http::HeaderMap, body: &[u8]) -> String {
    let id = header(headers, provider.delivery_header()).filter(|id| {
        id.len() <= MAX_DELIVERY_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    match id {
        Some(id) => id.to_owned(),
        None => {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(body);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The event a delivery names (bounded), or `unknown`.
pub fn event_name(provider: Provider, headers: &http::HeaderMap) -> String {
    header(headers, provider.event_header())
        .unwrap_or("unknown")
        .chars()
        .take(MAX_EVENT)
        .collect()
}

/// Reads a delivery. Unsigned input: the caller checks the signature
/// against the secret of whichever app this names before acting on it.
pub fn parse(
    provider: Provider,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Delivery, ParseError> {
    header(headers, provider.event_header())
        .ok_or(ParseError::MissingHeader(provider.event_header()))?;
    let event = event_name(provider, headers);
    let json: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    let repository = match provider {
        Provider::Gitlab => {
            let mut urls = Repository::deserialize(&json["project"])
                .unwrap_or_default()
                .urls();
            urls.extend(
                Repository::deserialize(&json["repository"])
                    .unwrap_or_default()
                    .urls(),
            );
            urls
        }
        _ => Repository::deserialize(&json["repository"])
            .unwrap_or_default()
            .urls(),
    };
    if repository.is_empty() {
        return Err(ParseError::NoRepository);
    }
    let change = match provider {
        Provider::Gitlab => gitlab(&event, &json)?,
        _ => github_like(&event, &json)?,
    };
    Ok(Delivery {
        provider,
        delivery_id: delivery_id(provider, headers, body),
        event,
        repo_urls: repository,
        change,
    })
}
