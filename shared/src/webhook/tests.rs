//! The forges' payload shapes (fixtures written from their public webhook
//! documentation, in `shared/fixtures/webhooks/`) read into one `Change`.

use http::HeaderMap;

use super::*;

const BEFORE: &str = "9049f1265b7d61be4a8904a9a27120d2064dab3b";
const AFTER: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

fn fixture(name: &str, branch: &str) -> Vec<u8> {
    let path = format!(
        "{}/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{{BRANCH}}", branch)
        .replace("{{BEFORE}}", BEFORE)
        .replace("{{AFTER}}", AFTER)
        .replace("{{CLONE_URL}}", "https://github.com/acme/ledger.git")
        .replace("{{SSH_URL}}", "git@github.com:acme/ledger.git")
        .replace("{{HTML_URL}}", "https://github.com/acme/ledger")
        .into_bytes()
}

fn headers(provider: Provider, event: &str, delivery: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(provider.event_header(), event.parse().unwrap());
    if let Some(d) = delivery {
        h.insert(provider.delivery_header(), d.parse().unwrap());
    }
    h
}

fn change(provider: Provider, event: &str, name: &str) -> Change {
    parse(
        provider,
        &headers(provider, event, Some("d-1")),
        &fixture(name, "main"),
    )
    .unwrap()
    .change
}

fn push(created: bool, forced: bool) -> Change {
    Change::Push {
        branch: "main".into(),
        before: if created {
            "0".repeat(40)
        } else {
            BEFORE.into()
        },
        after: AFTER.into(),
        created,
        forced,
    }
}

fn repo(branch: &str, auto_deploy: bool) -> Repo {
    Repo {
        url: "git@github.com:Acme/ledger".into(),
        branch: branch.into(),
        auto_deploy,
    }
}

#[test]
fn github_pushes_deletions_tags_and_pull_requests_read_as_what_they_are() {
    let gh = Provider::Github;
    assert_eq!(change(gh, "push", "github-push"), push(false, false));
    assert_eq!(
        change(gh, "push", "github-push-new-branch"),
        push(true, false)
    );
    assert_eq!(change(gh, "push", "github-push-forced"), push(false, true));
    assert_eq!(
        change(gh, "push", "github-push-deleted"),
        Change::BranchDeleted {
            branch: "main".into()
        }
    );
    assert_eq!(
        change(gh, "push", "github-push-tag"),
        Change::TagPush {
            tag: "v1.4.0".into()
        }
    );
    assert_eq!(
        change(gh, "pull_request", "github-pull-request-opened"),
        Change::PullRequest {
            number: 42,
            action: PullAction::Opened,
            from_fork: false,
            head_sha: AFTER.into(),
            head_branch: "round-totals".into()
        }
    );
    assert_eq!(change(gh, "ping", "github-ping"), Change::Ping);
    assert_eq!(change(gh, "issues", "github-ping"), Change::Other);
}

#[test]
fn gitea_and_gitlab_payloads_read_into_the_same_changes() {
    assert_eq!(
        change(Provider::Gitea, "push", "gitea-push"),
        push(false, false)
    );
    assert_eq!(
        change(Provider::Gitea, "delete", "gitea-delete"),
        Change::BranchDeleted {
            branch: "main".into()
        }
    );
    assert_eq!(
        change(
            Provider::Gitea,
            "pull_request",
            "gitea-pull-request-synchronized"
        ),
        Change::PullRequest {
            number: 7,
            action: PullAction::Updated,
            from_fork: false,
            head_sha: AFTER.into(),
            head_branch: "round-totals".into()
        }
    );
    let gl = Provider::Gitlab;
    assert_eq!(change(gl, "Push Hook", "gitlab-push"), push(false, false));
    assert_eq!(
        change(gl, "Push Hook", "gitlab-push-deleted"),
        Change::BranchDeleted {
            branch: "main".into()
        }
    );
    assert_eq!(
        change(gl, "Tag Push Hook", "gitlab-tag-push"),
        Change::TagPush {
            tag: "v1.4.0".into()
        }
    );
    assert_eq!(
        change(gl, "Merge Request Hook", "gitlab-merge-request-open"),
        Change::PullRequest {
            number: 3,
            action: PullAction::Opened,
            from_fork: false,
            head_sha: AFTER.into(),
            head_branch: "round-totals".into()
        }
    );
}

#[test]
fn every_repository_url_of_a_payload_is_kept_for_matching() {
    for (provider, event, name) in [
        (Provider::Github, "push", "github-push"),
        (Provider::Gitea, "push", "gitea-push"),
        (Provider::Gitlab, "Push Hook", "gitlab-push"),
    ] {
        let d = parse(
            provider,
            &headers(provider, event, None),
            &fixture(name, "main"),
        )
        .unwrap();
        let keys: std::collections::BTreeSet<_> = d
            .repo_urls
            .iter()
            .filter_map(|u| repo_url::key(u))
            .collect();
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            vec!["github.com/acme/ledger".to_owned()],
            "{name}: {:?}",
            d.repo_urls
        );
    }
}

#[test]
fn a_delivery_without_an_id_is_known_by_its_body_and_a_hostile_id_is_not_kept() {
    let body = fixture("github-push", "main");
    let gh = Provider::Github;
    let a = parse(gh, &headers(gh, "push", None), &body).unwrap();
    let b = parse(gh, &headers(gh, "push", Some("x y;rm")), &body).unwrap();
    assert!(a.delivery_id.starts_with("sha256:"), "{}", a.delivery_id);
    assert_eq!(a.delivery_id, b.delivery_id);
    let long = "a".repeat(500);
    let c = parse(gh, &headers(gh, "push", Some(&long)), &body).unwrap();
    assert_eq!(c.delivery_id, a.delivery_id);
    let d = parse(gh, &headers(gh, "push", Some("72d3162e-cc78")), &body).unwrap();
    assert_eq!(d.delivery_id, "72d3162e-cc78");
}

#[test]
fn malformed_deliveries_are_errors_not_panics() {
    let gh = Provider::Github;
    assert_eq!(
        parse(gh, &HeaderMap::new(), b"{}"),
        Err(ParseError::MissingHeader("x-github-event"))
    );
    assert!(matches!(
        parse(gh, &headers(gh, "push", None), b"not json"),
        Err(ParseError::Payload(_))
    ));
    assert_eq!(
        parse(
            gh,
            &headers(gh, "push", None),
            b"{\"ref\": \"refs/heads/main\"}"
        ),
        Err(ParseError::NoRepository)
    );
    let body = br#"{"ref": 5, "repository": {"clone_url": "https://h/o/r"}}"#;
    assert!(matches!(
        parse(gh, &headers(gh, "push", None), body),
        Err(ParseError::Payload(_))
    ));
    let huge = br#"{"action": "opened", "number": 18446744073709551615,
                    "pull_request": {"head": {"sha": "ab", "ref": "x"}},
                    "repository": {"clone_url": "https://h/o/r"}}"#;
    assert!(matches!(
        parse(gh, &headers(gh, "pull_request", None), huge),
        Err(ParseError::Payload(_))
    ));
    let body =
        br#"{"ref": "refs/notes/x", "after": "ab", "repository": {"clone_url": "https://h/o/r"}}"#;
    assert!(matches!(
        parse(gh, &headers(gh, "push", None), body),
        Err(ParseError::Payload(_))
    ));
}

#[test]
fn only_a_push_to_the_auto_deploy_branch_deploys_and_exactly_its_commit() {
    let deploy = Outcome::Deploy {
        commit: AFTER.into(),
    };
    let on = repo("main", true);
    assert_eq!(
        decide(&push(false, false), "push", "ledger", &on, false),
        deploy
    );
    assert_eq!(
        decide(&push(true, false), "push", "ledger", &on, false),
        deploy
    );
    assert_eq!(
        decide(&push(false, true), "push", "ledger", &on, false),
        deploy
    );
    let why = |o: Outcome| match o {
        Outcome::Ignore(why) => why,
        other => panic!("{other:?}"),
    };
    assert!(
        why(decide(
            &push(false, false),
            "push",
            "ledger",
            &repo("main", false),
            false
        ))
        .contains("autoDeploy")
    );
    assert!(
        why(decide(
            &push(false, false),
            "push",
            "ledger",
            &repo("prod", true),
            false
        ))
        .contains("deploys branch prod")
    );
    let deleted = Change::BranchDeleted {
        branch: "main".into(),
    };
    assert!(why(decide(&deleted, "push", "ledger", &on, false)).contains("deleted"));
    let tag = Change::TagPush { tag: "v1".into() };
    assert!(why(decide(&tag, "push", "ledger", &on, false)).contains("tag"));
    assert!(why(decide(&Change::Other, "issues", "ledger", &on, false)).contains("issues"));
    let not_a_commit = Change::Push {
        branch: "main".into(),
        before: BEFORE.into(),
        after: "HEAD".into(),
        created: false,
        forced: false,
    };
    assert!(why(decide(&not_a_commit, "push", "ledger", &on, false)).contains("not a commit"));
}

#[test]
fn signatures_are_checked_per_forge_and_a_wrong_or_missing_one_fails() {
    let body = fixture("github-push", "main");
    let good = sign_github("s3cret", &body);
    assert_eq!(
        verify(Provider::Github, "s3cret", Some(&good), &body),
        Ok(())
    );
    assert_eq!(
        verify(Provider::Github, "other", Some(&good), &body),
        Err(SignatureError::Mismatch)
    );
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(
        verify(Provider::Github, "s3cret", Some(&good), &tampered),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(Provider::Github, "s3cret", None, &body),
        Err(SignatureError::Unsigned("x-hub-signature-256"))
    );
    assert_eq!(
        verify(Provider::Github, "s3cret", Some("sha1=abc"), &body),
        Err(SignatureError::Malformed("x-hub-signature-256"))
    );
    assert_eq!(
        verify(Provider::Github, "s3cret", Some("sha256=zz"), &body),
        Err(SignatureError::Malformed("x-hub-signature-256"))
    );
    // Gitea: the same HMAC, bare hex.
    let bare = good.trim_start_matches("sha256=");
    assert_eq!(verify(Provider::Gitea, "s3cret", Some(bare), &body), Ok(()));
    assert_eq!(
        verify(Provider::Gitea, "s3cret", Some(&good), &body),
        Err(SignatureError::Malformed("x-gitea-signature"))
    );
    // GitLab: the token itself.
    assert_eq!(
        verify(Provider::Gitlab, "s3cret", Some("s3cret"), &body),
        Ok(())
    );
    assert_eq!(
        verify(Provider::Gitlab, "s3cret", Some("s3cre"), &body),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn a_stored_change_reads_back_as_itself() {
    for c in [
        push(true, true),
        Change::BranchDeleted { branch: "x".into() },
        Change::PullRequest {
            number: 1,
            action: PullAction::Other("labeled".into()),
            from_fork: true,
            head_sha: AFTER.into(),
            head_branch: "f".into(),
        },
        Change::Ping,
    ] {
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(serde_json::from_value::<Change>(json).unwrap(), c);
    }
}

#[test]
fn pull_requests_open_and_update_previews_and_closing_tears_them_down() {
    let on = repo("main", true);
    let pr = |action: PullAction| Change::PullRequest {
        number: 42,
        action,
        from_fork: false,
        head_sha: AFTER.into(),
        head_branch: "round-totals".into(),
    };
    let preview = Outcome::Preview {
        number: 42,
        commit: AFTER.into(),
        branch: "round-totals".into(),
    };
    for action in [
        PullAction::Opened,
        PullAction::Reopened,
        PullAction::Updated,
    ] {
        assert_eq!(
            decide(&pr(action), "pull_request", "ledger", &on, true),
            preview
        );
    }
    for action in [PullAction::Closed, PullAction::Merged] {
        assert_eq!(
            decide(&pr(action), "pull_request", "ledger", &on, true),
            Outcome::ClosePreview { number: 42 }
        );
    }
    assert!(matches!(
        decide(
            &pr(PullAction::Other("labeled".into())),
            "pull_request",
            "ledger",
            &on,
            true
        ),
        Outcome::Ignore(_)
    ));
    // Without previews, a pull request deploys nothing.
    assert!(matches!(
        decide(&pr(PullAction::Opened), "pull_request", "ledger", &on, false),
        Outcome::Ignore(why) if why.contains("no preview")
    ));
}

#[test]
fn a_pull_request_from_a_fork_gets_no_preview() {
    let body = String::from_utf8(fixture("github-pull-request-opened", "main"))
        .unwrap()
        .replacen(
            "\"full_name\": \"acme/ledger\"",
            "\"full_name\": \"mallory/ledger\"",
            1,
        );
    let gh = Provider::Github;
    let d = parse(gh, &headers(gh, "pull_request", None), body.as_bytes()).unwrap();
    assert!(
        matches!(
            d.change,
            Change::PullRequest {
                from_fork: true,
                ..
            }
        ),
        "{:?}",
        d.change
    );
    let on = repo("main", true);
    assert!(matches!(
        decide(&d.change, "pull_request", "ledger", &on, true),
        Outcome::Ignore(why) if why.contains("fork")
    ));
    // Without the base and head repositories, a pull request counts as a fork.
    let bare =
        br#"{"action": "opened", "number": 1, "pull_request": {"head": {"sha": "ab", "ref": "x"}},
                    "repository": {"clone_url": "https://h/o/r"}}"#;
    let d = parse(gh, &headers(gh, "pull_request", None), bare).unwrap();
    assert!(matches!(
        d.change,
        Change::PullRequest {
            from_fork: true,
            ..
        }
    ));
    // GitLab: source and target projects differ.
    let gl = Provider::Gitlab;
    let body = String::from_utf8(fixture("gitlab-merge-request-open", "main"))
        .unwrap()
        .replace("\"source_project_id\": 15", "\"source_project_id\": 99");
    let d = parse(
        gl,
        &headers(gl, "Merge Request Hook", None),
        body.as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        d.change,
        Change::PullRequest {
            from_fork: true,
            ..
        }
    ));
}
