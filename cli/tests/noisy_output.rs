//! Output an app prints cannot bloat or break Norn: a build printing 100 MB
//! deploys while the all-in-one `norn up` process stays small, its log (up
//! to the cap) is retrievable and `norn deploy` showed it live; output with
//! NUL bytes and control characters is stored for a deploy and a cron run.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{self, Proc, free_port, wait_api};
use common::rss::{RssSampler, mib, vm_rss};
use common::{AppRepo, Harness, cron_spec, eventually, spec, unique_app};
use serde_json::json;

/// Bytes the noisy build prints.
const NOISE: u64 = 100 * 1024 * 1024;
/// How much the all-in-one process may grow during that build. The step
/// log holds at most a 256 KiB batch, the 1 MiB end of the output and an
/// 8 KiB tail; the rest is allocator slack and the deploy's own work
/// (a deploy of a quiet app grows it by a few MiB).
const RSS_GROWTH: u64 = 30 * 1024 * 1024;

async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// An app repo whose build prints `script`'s output in a RUN step.
fn noisy_repo(root: &std::path::Path, name: &str, script: &str) -> AppRepo {
    let repo = AppRepo::create(root, name);
    std::fs::write(
        repo.dir.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /www\n\
             RUN {script}\n\
             CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        ),
    )
    .unwrap();
    repo.commit("noisy");
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_printing_100_mb_deploys_in_bounded_memory_with_its_log_retrievable_and_shown_live()
{
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let app = unique_app("noisy");
    let line =
        "noisy build line: the quick brown fox jumps over the lazy dog 0123456789 abcdefghij";
    let repo = noisy_repo(
        tmp.path(),
        &app,
        &format!(
            "echo build-begins && /bin/busybox yes '{line}' | /bin/busybox head -c {NOISE} && echo && echo build-ends"
        ),
    );
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let up = Command::new(procs::bin("norn"))
        .arg("up")
        .current_dir(tmp.path())
        .env("DATABASE_URL", &db)
        .env("NORN_PORT", port.to_string())
        .env("NORN_INGRESS_PORT", free_port().to_string())
        .env("NORN_APPS_DIR", tmp.path().join("apps"))
        .env("NORN_WORK_DIR", tmp.path().join("work"))
        .env("NORN_SNAPSHOTS_DIR", tmp.path().join("snapshots"))
        .env("NORN_DOCKER_NETWORK", "norn-test")
        .env("NORN_DRAIN_GRACE", "200ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn norn up");
    let up = Proc(up);
    let http = reqwest::Client::new();
    wait_api(&http, &api).await;
    let registered = http
        .post(format!("{api}/api/apps"))
        .json(&spec(&app, &repo, None))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status().as_u16(), 201);
    let pid = up.0.id();
    let baseline = vm_rss(pid).expect("norn up's VmRSS");
    // Killed past 1 GiB: a regression must fail the test, not the machine.
    let sampler = RssSampler::start(pid, baseline + (1 << 30));

    // `norn deploy`, as a user runs it, printing the build live.
    let cli = tokio::process::Command::new(procs::bin("norn"))
        .args(["--api", &api, "deploy", &app])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let cli = tokio::time::timeout(Duration::from_secs(600), cli)
        .await
        .expect("norn deploy finished within 10 minutes")
        .unwrap();
    let peak = sampler.peak();
    assert!(!sampler.killed(), "norn up passed 1 GiB and was killed");
    drop(sampler);
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "norn deploy failed: {}\n{}",
        String::from_utf8_lossy(&cli.stderr),
        norn_shared::text::tail(&stdout, 3000)
    );
    println!(
        "norn up VmRSS: baseline {:.1} MiB, peak {:.1} MiB during a {} MiB build (growth {:.1} MiB)",
        mib(baseline),
        mib(peak),
        NOISE >> 20,
        mib(peak.saturating_sub(baseline))
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH,
        "norn up grew by {:.1} MiB during the build (bound {:.0} MiB)",
        mib(peak - baseline),
        mib(RSS_GROWTH)
    );
    // Live: lines of the build, the end of it, and a note of what was not sent.
    assert!(stdout.contains(&format!("│ {line}")), "no live build line");
    assert!(
        stdout.contains("│ build-ends"),
        "the end of the build was not shown live"
    );
    assert!(
        stdout.contains("not shown live"),
        "no note of unsent output"
    );

    let deployment_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deployment ")?.strip_suffix(" queued"))
        .expect("norn deploy printed the deployment id")
        .to_owned();
    let one = get_text(&http, &format!("{api}/api/deployments/{deployment_id}")).await;
    println!("GET /api/deployments/{{id}}: {} bytes", one.len());
    assert!(
        one.len() < 64 * 1024,
        "deployment JSON is {} bytes",
        one.len()
    );
    let list = get_text(&http, &format!("{api}/api/deployments?app={app}")).await;
    assert!(!list.contains("\"output\""), "the list returns step output");

    let log = get_text(
        &http,
        &format!("{api}/api/deployments/{deployment_id}/logs?step=build"),
    )
    .await;
    let cap = 16 * 1024 * 1024;
    println!("build log through the logs route: {} bytes", log.len());
    assert!(
        log.len() <= cap + 1024,
        "log of {} bytes over the cap",
        log.len()
    );
    assert!(
        log.len() > cap - 1024 * 1024,
        "log of only {} bytes",
        log.len()
    );
    assert!(
        log.contains("build-begins"),
        "the start of the build is missing"
    );
    assert!(
        log.contains("build-ends"),
        "the end of the build is missing"
    );
    assert!(log.contains("bytes omitted …]"), "no omitted marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_with_nul_bytes_and_control_characters_is_stored_for_a_deploy_and_a_cron_run() {
    let h = Harness::start().await;
    h.spawn_scheduler();
    let app = unique_app("nul");
    let printf = r"printf 'before\000after \001\033[31mred\033[0m \\u0000 end\n'";
    let repo = noisy_repo(h.tmp.path(), &app, printf);
    h.register_and_deploy(spec(&app, &repo, Some(printf))).await;
    let (_, list) = h.get(&format!("/api/deployments?app={app}")).await;
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (_, d) = h.get(&format!("/api/deployments/{id}")).await;
    let steps = d["steps"].as_array().unwrap();
    for step in ["build", "test"] {
        let entry = steps.iter().find(|s| s["step"] == step).unwrap();
        let out = entry["output"].as_str().unwrap();
        assert!(
            out.contains("before\u{FFFD}after \u{1}\u{1b}[31mred"),
            "{step}: {out:?}"
        );
    }
    let log = get_text(
        &h.http,
        &format!("{}/api/deployments/{id}/logs?step=test", h.api),
    )
    .await;
    assert!(log.contains("before\u{FFFD}after"), "{log:?}");

    let cron_app = unique_app("nulcron");
    let cron_repo = AppRepo::create(h.tmp.path(), &cron_app);
    h.register_and_deploy(cron_spec(
        &cron_app,
        &cron_repo,
        "* * * * * *",
        printf,
        json!({}),
    ))
    .await;
    let output: String = eventually(Duration::from_secs(60), "a completed cron run", || async {
        sqlx::query_as::<_, (String,)>(
            "SELECT output FROM cron_executions WHERE app = $1 AND status = 'completed' LIMIT 1",
        )
        .bind(&cron_app)
        .fetch_optional(&h.pool)
        .await
        .unwrap()
        .map(|(o,)| o)
    })
    .await;
    assert!(output.contains("before\u{FFFD}after \u{1}"), "{output:?}");
}
