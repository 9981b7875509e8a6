//! Git forge webhooks: what a delivery says (parsed once, per forge, into
//! [`Change`]), whether it is signed with the secret Norn holds, which apps
//! it concerns ([`repo_url::key`]) and what Norn does about it ([`decide`]).
//!
//! Nothing here touches the network or the database: the API route reads
//! the request, asks this module, and records the answer.

mod payload;
pub mod repo_url;
mod signature;

use serde::{Deserialize, Serialize};

pub use payload::{ParseError, delivery_id, event_name, parse};
pub use signature::{SignatureError, sign_github, verify};

use crate::infraspec::Repo;

/// The forges Norn takes webhooks from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitea,
    Gitlab,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Github, Provider::Gitea, Provider::Gitlab];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitea => "gitea",
            Provider::Gitlab => "gitlab",
        }
    }

    /// The header naming the event (`push`, `Push Hook`, …).
    pub fn event_header(self) -> &'static str {
        match self {
            Provider::Github => "x-github-event",
            Provider::Gitea => "x-gitea-event",
            Provider::Gitlab => "x-gitlab-event",
        }
    }

    /// The header with the forge's id of this delivery (kept on redelivery).
    pub fn delivery_header(self) -> &'static str {
        match self {
            Provider::Github => "x-github-delivery",
            Provider::Gitea => "x-gitea-delivery",
            Provider::Gitlab => "x-gitlab-event-uuid",
        }
    }

    /// The header carrying the signature (GitHub, Gitea) or the token (GitLab).
    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::Github => "x-hub-signature-256",
            Provider::Gitea => "x-gitea-signature",
            Provider::Gitlab => "x-gitlab-token",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a forge Norn knows (github, gitea, gitlab)"))
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pull (merge) request event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PullAction {
    Opened,
    Reopened,
    /// New commits on the head branch (GitHub `synchronize`, Gitea
    /// `synchronized`, GitLab `update` with a new last commit).
    Updated,
    Closed,
    Merged,
    /// Anything else (labels, assignees, edits).
    Other(String),
}

/// What a delivery says happened, whatever forge sent it. Stored with the
/// delivery, so a replay decides again from exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Change {
    /// Commits pushed to a branch; `after` is its new head. `created`: the
    /// branch is new; `forced`: history was rewritten.
    #[serde(rename_all = "camelCase")]
    Push {
        branch: String,
        before: String,
        after: String,
        created: bool,
        forced: bool,
    },
    BranchDeleted {
        branch: String,
    },
    TagPush {
        tag: String,
    },
    #[serde(rename_all = "camelCase")]
    PullRequest {
        number: u64,
        action: PullAction,
        /// The head is in another repository (a fork): its code is anyone's.
        from_fork: bool,
        head_sha: String,
        head_branch: String,
    },
    /// The forge checking that the hook works.
    Ping,
    /// An event Norn does not act on; its name is the delivery's event.
    Other,
}

/// A delivery, parsed and bounded: who sent it, which repository it is
/// about (every URL the payload gives for it) and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub provider: Provider,
    pub event: String,
    pub delivery_id: String,
    pub repo_urls: Vec<String>,
    pub change: Change,
}

/// What Norn does with a verified delivery for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deploy exactly this commit.
    Deploy {
        commit: String,
    },
    /// Deploy this commit as the preview of pull request `number`.
    Preview {
        number: u64,
        commit: String,
        branch: String,
    },
    /// Tear the preview of pull request `number` down.
    ClosePreview {
        number: u64,
    },
    Ignore(String),
}

/// A full commit id (SHA-1 or SHA-256 object format).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a verified delivery means for the app whose `repo` it matched
/// (`previews`: the app has preview environments enabled).
pub fn decide(change: &Change, event: &str, app: &str, repo: &Repo, previews: bool) -> Outcome {
    let ignore = |why: String| Outcome::Ignore(why);
    match change {
        Change::Push { branch, after, .. } => {
            if !repo.auto_deploy {
                ignore(format!(
                    "app {app} does not deploy on push (repo.autoDeploy is off)"
                ))
            } else if *branch != repo.branch {
                ignore(format!(
                    "push to branch {branch}; app {app} deploys branch {}",
                    repo.branch
                ))
            } else if !is_commit_id(after) {
                ignore(format!("the pushed head {after:?} is not a commit id"))
            } else {
                Outcome::Deploy {
                    commit: after.to_ascii_lowercase(),
                }
            }
        }
        Change::BranchDeleted { branch } => ignore(format!("branch {branch} was deleted")),
        Change::TagPush { tag } => ignore(format!("tag push ({tag}); only branch pushes deploy")),
        Change::PullRequest { number, .. } if !previews => ignore(format!(
            "pull request #{number}: app {app} has no preview environments"
        )),
        Change::PullRequest {
            number,
            from_fork: true,
            action: PullAction::Opened | PullAction::Reopened | PullAction::Updated,
            ..
        } => ignore(format!(
            "pull request #{number} comes from a fork: Norn does not run a fork's code with the app's secrets"
        )),
        Change::PullRequest {
            number,
            action,
            head_sha,
            head_branch,
            ..
        } => match action {
            PullAction::Opened | PullAction::Reopened | PullAction::Updated
                if is_commit_id(head_sha) =>
            {
                Outcome::Preview {
                    number: *number,
                    commit: head_sha.to_ascii_lowercase(),
                    branch: head_branch.clone(),
                }
            }
            PullAction::Opened | PullAction::Reopened | PullAction::Updated => ignore(format!(
                "pull request #{number}: its head {head_sha:?} is not a commit id"
            )),
            PullAction::Closed | PullAction::Merged => Outcome::ClosePreview { number: *number },
            PullAction::Other(what) => ignore(format!(
                "pull request #{number} {what}: no new code, nothing to deploy"
            )),
        },
        Change::Ping => ignore("ping: the hook works".into()),
        Change::Other => ignore(format!("event {event:?} is not one Norn acts on")),
    }
}

#[cfg(test)]
mod tests;
