//! A witness HTTP server on the host: cron commands report each run to it
//! with `wget` (at the host's address on the default bridge: app containers
//! never share the host's network), so runs are counted where they happen,
//! not in Norn's own tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on the host that records every request's path and when it
/// arrived (the cron commands `wget` it).
pub struct Witness {
    pub port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
}

/// A request's path and when it arrived.
pub type Hit = (String, DateTime<Utc>);

impl Witness {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(2).any(|w| w == b"\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req).to_string();
                    if let Some(path) = req.split_whitespace().nth(1) {
                        seen.lock().unwrap().push((path.to_owned(), Utc::now()));
                    }
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                        )
                        .await;
                });
            }
        });
        Self { port, hits }
    }

    /// A shell command that requests `path` (a shell word) from the witness.
    pub fn get(&self, path: &str) -> String {
        format!(
            "busybox wget -q -O /dev/null http://{}:{}/{path}",
            super::host_from_containers(),
            self.port
        )
    }

    /// Arrival times of the requests for exactly `path`.
    pub fn times(&self, path: &str) -> Vec<DateTime<Utc>> {
        let hits = self.hits.lock().unwrap();
        hits.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect()
    }

    /// How many requests arrived for each path under `/prefix/`, by the rest.
    pub fn counts(&self, prefix: &str) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (p, _) in self.hits.lock().unwrap().iter() {
            if let Some(rest) = p.strip_prefix(&format!("/{prefix}/")) {
                *out.entry(rest.to_owned()).or_default() += 1;
            }
        }
        out
    }
}

/// Shell: a fresh id for this run, printed (so it lands in the execution's
/// recorded output as `run <id>`) and reported to the witness as `/run/<id>`.
pub fn reported_run(witness: &Witness) -> String {
    format!(
        "id=$(busybox cat /proc/sys/kernel/random/uuid) && echo \"run $id\" && {}",
        witness.get("run/$id")
    )
}

/// The run id an execution printed (see [`reported_run`]).
pub fn run_id(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .map(|id| id.trim().to_owned())
}
