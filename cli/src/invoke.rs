//! `norn invoke`: runs an app's function once and prints its output; the
//! exit code is the function's.

use std::io::{Read, Write};

use anyhow::{Context, bail};
use norn_shared::db::functions::{InvokeAccepted, InvokeResult, Status};

use crate::client::{Api, decode};

#[derive(clap::Args)]
pub struct Args {
    app: String,
    /// The function (a process with a `function` block); may be left out
    /// when the app has exactly one.
    #[arg(long, short)]
    process: Option<String>,
    /// The request body: text, `@file`, or `-` for standard input.
    #[arg(long, short)]
    data: Option<String>,
    /// The body's content type (the function sees it as NORN_REQUEST_CONTENT_TYPE).
    #[arg(long)]
    content_type: Option<String>,
    /// Do not wait: print the execution id (fetch it with
    /// GET /api/functions/executions/<id>).
    #[arg(long = "async")]
    asynchronous: bool,
}

/// The largest body the API accepts (it answers 413 beyond).
const MAX_BODY: u64 = 1 << 20;

fn body(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match data {
        None => {}
        Some("-") => {
            std::io::stdin()
                .take(MAX_BODY + 1)
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
        }
        Some(path) if path.starts_with('@') => {
            let path = &path[1..];
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_BODY + 1).read_to_end(&mut bytes))
                .with_context(|| format!("reading {path}"))?;
        }
        Some(text) => bytes.extend_from_slice(text.as_bytes()),
    }
    if bytes.len() as u64 > MAX_BODY {
        bail!("the request body is larger than {MAX_BODY} bytes, the API's limit");
    }
    Ok(bytes)
}

/// The process exit code: the function's own, 1 when it had none.
pub async fn run(api: &Api, args: Args) -> anyhow::Result<i32> {
    let mut path = format!("/api/apps/{}/invoke?", args.app);
    if let Some(p) = &args.process {
        path.push_str(&format!("process={p}&"));
    }
    if args.asynchronous {
        path.push_str("async=true");
    }
    let body = body(args.data.as_deref())?;
    let (status, answer) = api
        .post_bytes(
            path.trim_end_matches(['?', '&']),
            body,
            args.content_type.as_deref(),
        )
        .await?;
    if status == 202 {
        let InvokeAccepted { id, .. } = decode(answer, &path)?;
        if args.asynchronous {
            println!("{id}");
        } else {
            eprintln!(
                "norn: execution {id} is still running; GET /api/functions/executions/{id} has its result"
            );
        }
        return Ok(0);
    }
    print_result(&decode(answer, &path)?)
}

fn print_result(answer: &InvokeResult) -> anyhow::Result<i32> {
    if let Some(output) = &answer.output {
        let mut out = std::io::stdout().lock();
        out.write_all(output.as_bytes())?;
        out.flush()?;
    }
    let status = answer.status.as_str();
    if answer.status != Status::Succeeded {
        let reason = answer.reason.as_deref().unwrap_or(status);
        eprintln!("norn: execution {} {status}: {reason}", answer.id);
    }
    Ok(match answer.exit_code {
        Some(code) => code,
        None if answer.status == Status::Succeeded => 0,
        None => 1,
    })
}
