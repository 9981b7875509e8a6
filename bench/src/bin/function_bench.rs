//! function-bench: the round trip of `norn invoke` (sync, through the API,
//! the function queue and a worker) side by side with a bare
//! `docker run --rm -i <image> /bin/sh -c cat` of the same image (the
//! command the function runs), sequentially and
//! `--concurrency` at a time. Needs a running Norn (`norn up`) with a
//! deployed app whose function echoes its stdin (`examples/hello`'s `echo`).
//! Prints Markdown; see bench/README.md.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use norn_bench::stats::{Summary, ms, summarize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

#[derive(Parser, Debug)]
#[command(about = "Measures norn invoke against a bare docker run of the same image")]
struct Args {
    #[arg(long, env = "NORN_URL", default_value = "http://127.0.0.1:8800")]
    api: String,
    #[arg(long, env = "NORN_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "hello")]
    app: String,
    /// The function; may be left out when the app has one.
    #[arg(long)]
    process: Option<String>,
    /// Invocations of each kind, per mode.
    #[arg(long, short, default_value_t = 200)]
    n: usize,
    /// How many at once in the concurrent mode.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Norn's app network (`NORN_DOCKER_NETWORK`): a third column runs the
    /// bare `docker run` on it too, where function containers run. Empty:
    /// not measured.
    #[arg(long, default_value = "norn")]
    network: String,
}

struct Bench {
    args: Args,
    http: reqwest::Client,
    image: String,
}

const BODY: &str = "ping from function-bench";

impl Bench {
    async fn invoke(&self) -> anyhow::Result<Value> {
        let mut url = format!("{}/api/apps/{}/invoke", self.args.api, self.args.app);
        if let Some(p) = &self.args.process {
            url.push_str(&format!("?process={p}"));
        }
        let mut req = self.http.post(url).body(BODY);
        if let Some(t) = &self.args.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.context("reaching the Norn API")?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or_default();
        if status != 200 || answer["output"] != BODY {
            bail!("norn invoke answered {status}: {answer}");
        }
        Ok(answer)
    }

    async fn docker_run(&self, network: Option<&str>) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm", "-i"]);
        if let Some(network) = network {
            cmd.args(["--network", network]);
        }
        let mut child = cmd
            .args([&self.image, "/bin/sh", "-c", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running docker")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(BODY.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() || out.stdout != BODY.as_bytes() {
            bail!(
                "docker run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn timed_norn(&self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.invoke().await?;
        Ok(start.elapsed())
    }

    async fn timed_docker(&self, network: Option<&str>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.docker_run(network).await?;
        Ok(start.elapsed())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut bench = Bench {
        args,
        http: reqwest::Client::new(),
        image: String::new(),
    };
    // One of each first: the image tag, a warm connection and page cache.
    let first = bench.invoke().await?;
    let id = first["id"].as_i64().context("no execution id")?;
    let mut req = bench
        .http
        .get(format!("{}/api/functions/executions/{id}", bench.args.api));
    if let Some(t) = &bench.args.token {
        req = req.bearer_auth(t);
    }
    let execution: Value = req.send().await?.json().await?;
    bench.image = execution["imageTag"]
        .as_str()
        .context("the execution names no image")?
        .to_owned();
    bench.docker_run(None).await?;
    let network = (!bench.args.network.is_empty()).then(|| bench.args.network.clone());

    let n = bench.args.n;
    println!("# function-bench\n");
    println!(
        "`norn invoke` (sync HTTP) of `{}` against `docker run --rm -i {} /bin/sh -c cat`, same image, same body; {n} of each per mode.\n",
        bench.args.app, bench.image
    );
    println!("| mode | what | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");

    // Sequential, alternating, so drift in the machine hits both alike.
    let (mut bare, mut on_net, mut norn) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        bare.push(bench.timed_docker(None).await?);
        if let Some(net) = &network {
            on_net.push(bench.timed_docker(Some(net)).await?);
        }
        norn.push(bench.timed_norn().await?);
    }
    let sequential = (summarize(bare), summarize(norn));
    row("sequential", "docker run", &sequential.0);
    if let Some(net) = &network {
        row(
            "sequential",
            &format!("docker run --network {net}"),
            &summarize(on_net),
        );
    }
    row("sequential", "norn invoke", &sequential.1);

    let c = bench.args.concurrency;
    let mode = format!("{c} at a time");
    let bare = concurrently(n, c, || bench.timed_docker(None)).await?;
    let bare = summarize(bare);
    row(&mode, "docker run", &bare);
    if let Some(net) = &network {
        let on_net = concurrently(n, c, || bench.timed_docker(Some(net))).await?;
        row(
            &mode,
            &format!("docker run --network {net}"),
            &summarize(on_net),
        );
    }
    let norn = concurrently(n, c, || bench.timed_norn()).await?;
    let concurrent = (bare, summarize(norn));
    row(&mode, "norn invoke", &concurrent.1);

    println!("\n| mode | added at p50 | ratio p50 (norn / docker run) |");
    println!("|---|---|---|");
    for (mode, (bare, norn)) in [("sequential", &sequential), (mode.as_str(), &concurrent)] {
        let added = norn.p50.as_secs_f64() - bare.p50.as_secs_f64();
        println!(
            "| {mode} | {:+.1} ms | {:.2} |",
            added * 1000.0,
            norn.p50.as_secs_f64() / bare.p50.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

async fn concurrently<'a, F, Fut>(n: usize, c: usize, f: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut + 'a,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + 'a,
{
    futures::stream::iter((0..n).map(|_| f()))
        .buffer_unordered(c.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn row(mode: &str, what: &str, s: &Summary) {
    println!(
        "| {mode} | {what} | {} | {} | {} | {} |",
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}
