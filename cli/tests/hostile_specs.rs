//! Hostile and mistaken infraspecs against the real `norn-api` binary: every
//! file of `tests/malformed-specs/` gets the answer its `MANIFEST` line names
//! (status, `field`, a substring of `error`), bodies over 1 MiB are refused
//! with 413, and the API process neither dies nor grows: its VmRSS, read from
//! `/proc` by a thread of this test every 20 ms, stays within a bound of the
//! baseline for the whole run.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::procs::{Proc, free_port, spawn, wait_api};
use common::rss::{RssSampler, mib, vm_rss};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest body `POST /api/apps` accepts.
const BODY_LIMIT: usize = 1024 * 1024;
/// How far the API's resident memory may rise above its baseline.
const RSS_HEADROOM: u64 = 64 * 1024 * 1024;
/// Above baseline + this the sampler kills the API (a bomb that gets through
/// must fail this test, not take the machine down).
const RSS_KILL: u64 = 512 * 1024 * 1024;
/// Any single request, including the oversized ones.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/malformed-specs")
}

/// One `MANIFEST` line.
#[derive(Debug)]
struct Case {
    file: String,
    status: u16,
    /// `None` for `-`: the answer's `field` is not checked.
    field: Option<String>,
    /// `None` for `-`: the answer's `error` is not checked; else it contains
    /// one of the `|`-separated substrings (case-insensitive).
    message: Option<String>,
}

/// The `MANIFEST`: tab-separated `file status field substrings`; blank
/// lines and lines starting with `#` are comments.
fn manifest() -> Vec<Case> {
    let path = corpus_dir().join("MANIFEST");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dash = |s: &str| (s != "-").then(|| s.to_owned());
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split('\t').collect();
            let [file, status, field, message] = cols[..] else {
                panic!(
                    "MANIFEST line {}: want 4 tab-separated columns: {line:?}",
                    i + 1
                );
            };
            Case {
                file: file.to_owned(),
                status: status.parse().unwrap_or_else(|_| {
                    panic!("MANIFEST line {}: {status:?} is not a status", i + 1)
                }),
                field: dash(field),
                message: dash(message),
            }
        })
        .collect()
}

/// The corpus files (every regular file but the `MANIFEST`).
fn corpus_files() -> BTreeSet<String> {
    std::fs::read_dir(corpus_dir())
        .expect("tests/malformed-specs/ exists")
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| entry.file_name().into_string().unwrap())
        .filter(|name| name != "MANIFEST")
        .collect()
}

/// `.json` is sent as JSON; everything else (`.yaml`, raw `.bin`) as YAML.
fn content_type(file: &str) -> &'static str {
    if file.ends_with(".json") {
        "application/json"
    } else {
        "application/yaml"
    }
}

/// The real API on a fresh database, with its RSS watched.
struct Api {
    proc: Proc,
    base: String,
    addr: SocketAddr,
    http: reqwest::Client,
    rss: RssSampler,
    baseline: u64,
    _tmp: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let db = norn_shared::testing::fresh_database().await;
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let proc = spawn("norn-api", &db, tmp.path(), "hostile-api", port);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        wait_api(&http, &base).await;
        // Warm up the routes this test uses before taking the baseline.
        let warm = http
            .post(format!("{base}/api/apps"))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body("name: warm-up\nprocesses: {web: {port: 0}}\n")
            .send()
            .await
            .unwrap();
        assert_eq!(warm.status().as_u16(), 400, "a port of 0 is refused");
        let _ = warm.text().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = proc.0.id();
        let baseline = vm_rss(pid).expect("the API's /proc/<pid>/status has VmRSS");
        let rss = RssSampler::start(pid, baseline + RSS_KILL);
        Api {
            proc,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            base,
            http,
            rss,
            baseline,
            _tmp: tmp,
        }
    }

    /// `Err` unless the API process runs and its health route answers 200.
    async fn alive(&mut self) -> Result<(), String> {
        if self.rss.killed() {
            return Err(format!(
                "the API's VmRSS passed baseline {:.1} MiB + {:.0} MiB and the sampler killed it",
                mib(self.baseline),
                mib(RSS_KILL)
            ));
        }
        if let Ok(Some(exit)) = self.proc.0.try_wait() {
            return Err(format!("the API exited ({exit})"));
        }
        let resp = self
            .http
            .get(format!("{}/api/health", self.base))
            .send()
            .await
            .map_err(|e| format!("the API's health route failed: {e}"))?;
        match resp.status().as_u16() {
            200 => Ok(()),
            other => Err(format!("the API's health route answered {other}")),
        }
    }

    /// `POST /api/apps` with `body`: the status and the body as text.
    async fn register(&self, content_type: &str, body: Vec<u8>) -> Result<(u16, String), String> {
        let sent = self
            .http
            .post(format!("{}/api/apps", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.map_err(|e| e.to_string())?;
                Ok((status, text))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Compares one answer with what the MANIFEST wants; `Err` describes the
/// difference.
fn check(case: &Case, status: u16, body: &str) -> Result<(), String> {
    let short: String = body.chars().take(400).collect();
    if status != case.status {
        return Err(format!("status {status}, want {}: {short}", case.status));
    }
    if !(400..500).contains(&status) {
        return Ok(());
    }
    let json: Value =
        serde_json::from_str(body).map_err(|_| format!("{status} without a JSON body: {short}"))?;
    let error = json["error"]
        .as_str()
        .ok_or_else(|| format!("{status} without an `error` string: {short}"))?;
    if let Some(want) = &case.message {
        let lower = error.to_lowercase();
        if !want.split('|').any(|w| lower.contains(&w.to_lowercase())) {
            return Err(format!("error {error:?} mentions none of {want:?}"));
        }
    }
    if let Some(want) = &case.field
        && json["field"].as_str() != Some(want.as_str())
    {
        return Err(format!(
            "field {}, want {want:?} ({error:?})",
            json["field"]
        ));
    }
    Ok(())
}

/// `len` bytes of YAML comment lines (and blank lines for the remainder).
fn padding(len: usize) -> Vec<u8> {
    let line = format!("# {}\n", "x".repeat(77));
    let mut out = line.as_bytes().repeat(len / line.len());
    out.resize(len, b'\n');
    out
}

/// A valid spec for `name`, padded with comments to exactly `len` bytes.
fn padded_spec(name: &str, len: usize) -> Vec<u8> {
    let mut body = format!("name: {name}\nprocesses:\n  web:\n    port: 8080\n").into_bytes();
    assert!(body.len() <= len);
    let rest = len - body.len();
    body.extend(padding(rest));
    body
}

/// `POST /api/apps` by hand on a raw socket, for bodies the server should
/// refuse before reading them: it answers while the body is still being
/// sent and closes, so writes may fail; the answer is read concurrently.
/// A valid spec followed by comment lines, `len` bytes in all, sent with a
/// `Content-Length` or (`chunked`) without one.
async fn post_oversized(addr: SocketAddr, len: usize, chunked: bool) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "POST /api/apps HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/yaml\r\n\
         {framing}\r\nConnection: close\r\n\r\n"
    );
    let writer = async {
        wr.write_all(head.as_bytes()).await?;
        let first = padded_spec("oversized", 64 * 1024);
        let filler = padding(64 * 1024);
        let mut sent = 0;
        while sent < len {
            let chunk = if sent == 0 { &first } else { &filler };
            let n = chunk.len().min(len - sent);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            wr.write_all(&chunk[..n]).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
            sent += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await
    };
    // A refusal closes the connection under the writer: that error is expected.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, writer).await;
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, reader)
        .await
        .unwrap_or_else(|_| panic!("no answer to a {len}-byte body within {REQUEST_TIMEOUT:?}"))
        .unwrap();
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to a {len}-byte body (chunked: {chunked}): {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(400)])
        )
    })
}

/// Status and body of a raw HTTP/1.1 response (with `Connection: close`).
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = &raw[end + 4..];
    let is_chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut out = Vec::new();
    if is_chunked {
        loop {
            let eol = body.windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&body[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            body = &body[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(..size)?);
            body = body.get(size + 2..).unwrap_or_default();
        }
    } else {
        out.extend_from_slice(body);
    }
    Some((status, String::from_utf8_lossy(&out).into_owned()))
}

/// Panics unless the API is alive, with what differed from the MANIFEST so
/// far (a dead API makes every later answer meaningless).
async fn assert_alive(api: &mut Api, after: &str, mismatches: &[String]) {
    if let Err(why) = api.alive().await {
        panic!(
            "{why} after {after}; answers that differed before that:\n{}",
            mismatches.join("\n")
        );
    }
}

#[tokio::test]
async fn every_malformed_spec_gets_its_manifest_answer_while_the_api_stays_up_with_bounded_memory()
{
    let cases = manifest();
    let mut api = Api::start().await;
    println!("API baseline VmRSS {:.1} MiB", mib(api.baseline));
    let mut mismatches = Vec::new();
    let mut answers = 0;

    for case in &cases {
        let body = std::fs::read(corpus_dir().join(&case.file)).unwrap();
        let started = Instant::now();
        let answer = api.register(content_type(&case.file), body).await;
        answers += 1;
        match answer {
            Ok((status, text)) => {
                println!(
                    "{:<48} {status} in {:>6} ms, peak VmRSS {:.1} MiB",
                    case.file,
                    started.elapsed().as_millis(),
                    mib(api.rss.peak())
                );
                if let Err(why) = check(case, status, &text) {
                    mismatches.push(format!("{}: {why}", case.file));
                }
            }
            Err(e) => mismatches.push(format!("{}: no answer: {e}", case.file)),
        }
        assert_alive(&mut api, &case.file, &mismatches).await;
    }

    // Too large to store in the corpus: generated here.
    let oversized = [
        ("50 MiB with Content-Length", 50 * 1024 * 1024, false),
        ("50 MiB chunked, no Content-Length", 50 * 1024 * 1024, true),
        ("1 MiB + 1 byte with Content-Length", BODY_LIMIT + 1, false),
    ];
    for (what, len, chunked) in oversized {
        let (status, text) = post_oversized(api.addr, len, chunked).await;
        answers += 1;
        println!(
            "{what:<48} {status}, peak VmRSS {:.1} MiB",
            mib(api.rss.peak())
        );
        let json: Value = serde_json::from_str(&text).unwrap_or_default();
        let error = json["error"].as_str().unwrap_or_default().to_lowercase();
        if status != 413 || !error.contains("exceeds") || !error.contains(&BODY_LIMIT.to_string()) {
            mismatches.push(format!(
                "{what}: want 413 with an error mentioning \"exceeds\" and {BODY_LIMIT}, got {status} {text:?}"
            ));
        }
        assert_alive(&mut api, what, &mismatches).await;
    }
    // Exactly at the limit is not too large.
    let at_limit = padded_spec("exactly-one-mebibyte", BODY_LIMIT);
    let answer = api.register("application/yaml", at_limit).await;
    answers += 1;
    if !matches!(answer, Ok((201, _))) {
        mismatches.push(format!(
            "a valid spec of exactly {BODY_LIMIT} bytes: want 201, got {answer:?}"
        ));
    }
    assert_alive(&mut api, "the body of exactly 1 MiB", &mismatches).await;

    // The API still does its job.
    let valid = "name: registers-after-the-corpus\nprocesses:\n  web:\n    port: 8080\n    \
                 health: {path: /health, interval: 24h, timeout: 2s}\n";
    let (status, text) = api
        .register("application/yaml", valid.as_bytes().to_vec())
        .await
        .expect("the API answers");
    assert_eq!(status, 201, "a valid spec after the corpus: {text}");
    assert_alive(&mut api, "the valid spec", &mismatches).await;

    // A few sampling periods more, so the last request's spike is in.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (baseline, peak) = (api.baseline, api.rss.peak());
    println!(
        "API VmRSS: baseline {:.1} MiB, peak {:.1} MiB (+{:.1} MiB; bound +{:.0} MiB)",
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(RSS_HEADROOM)
    );
    assert!(
        mismatches.is_empty(),
        "{} of {answers} answers differ from what is expected:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        peak < baseline + RSS_HEADROOM,
        "the API's VmRSS peaked at {:.1} MiB, over baseline {:.1} MiB + {:.0} MiB",
        mib(peak),
        mib(baseline),
        mib(RSS_HEADROOM)
    );
}

#[test]
fn the_corpus_has_at_least_thirty_files_and_the_manifest_lists_each_exactly_once() {
    let files = corpus_files();
    let cases = manifest();
    assert!(
        files.len() >= 30,
        "tests/malformed-specs/ has {} files, want at least 30",
        files.len()
    );
    let mut listed = BTreeSet::new();
    for case in &cases {
        assert!(
            listed.insert(case.file.as_str()),
            "{} is listed twice in the MANIFEST",
            case.file
        );
        assert!(
            (100..600).contains(&case.status),
            "{}: {} is not an HTTP status",
            case.file,
            case.status
        );
    }
    let unlisted: Vec<&String> = files
        .iter()
        .filter(|f| !listed.contains(f.as_str()))
        .collect();
    assert!(unlisted.is_empty(), "not in the MANIFEST: {unlisted:?}");
    let missing: Vec<&&str> = listed.iter().filter(|f| !files.contains(**f)).collect();
    assert!(
        missing.is_empty(),
        "in the MANIFEST but not in the corpus: {missing:?}"
    );
    // Bodies over the limit are generated by the test; a stored file that big
    // would be refused for its size, not for what its name says.
    for file in &files {
        let len = std::fs::metadata(corpus_dir().join(file)).unwrap().len();
        assert!(
            len <= BODY_LIMIT as u64,
            "{file} is {len} bytes, over the 1 MiB body limit"
        );
    }
}
