//! A step's output on its way out: persisted in chunks to `step_logs` as it
//! is produced, sent live as `deploy.log` events, and kept as a short tail
//! for `deployments.steps[].output`. Memory is bounded whatever a build
//! prints: the writer holds at most one batch and the end of the output, and
//! a full channel slows the producer instead of buffering.
//!
//! Past `NORN_STEP_LOG_MAX` bytes the middle is dropped: the first part is
//! stored as it comes, the last [`END_KEPT`] bytes are kept in memory and
//! written at the end after a `[… N bytes omitted …]` marker, since errors
//! are usually at the end.

use std::time::Duration;

use norn_shared::db::logs;
use norn_shared::domain::Step;
use norn_shared::events::{self, DeployLog, Event, EventBody};
use norn_shared::text::{self, Masker, Tail};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::adapters::Output;

/// The tail kept in the deployment row per step.
pub const ROW_TAIL: usize = 8 * 1024;
/// How often buffered output is written and sent live.
const BATCH_EVERY: Duration = Duration::from_millis(100);
/// A batch is written early once it is this large.
const BATCH_MAX: usize = 256 * 1024;
/// The end of an over-long output, kept for after the omitted marker (at
/// most half the cap).
const END_KEPT: usize = 1024 * 1024;
/// Text of one `deploy.log` event; the rest of a batch is counted, not sent.
const EVENT_TEXT: usize = 3000;

/// Where one step of one attempt writes.
#[derive(Clone)]
pub struct LogTarget {
    pub pool: PgPool,
    pub app: String,
    pub deployment_id: String,
    pub step: Step,
    pub attempt: i32,
    /// `NORN_STEP_LOG_MAX`.
    pub cap: usize,
}

pub struct StepLog {
    tail: Tail,
    writer: Option<(mpsc::Sender<String>, JoinHandle<()>)>,
    /// The app's secret values never get past here.
    masker: Masker,
}

impl StepLog {
    /// A log that only keeps the tail (before the first step starts).
    pub fn detached() -> Self {
        Self {
            tail: Tail::new(ROW_TAIL),
            writer: None,
            masker: Masker::default(),
        }
    }

    pub fn start(target: LogTarget, masker: Masker) -> Self {
        let (tx, rx) = mpsc::channel(64);
        Self {
            tail: Tail::new(ROW_TAIL),
            writer: Some((tx, tokio::spawn(write(target, rx)))),
            masker,
        }
    }

    /// Waits until everything written is stored; returns the tail for the
    /// deployment row.
    pub async fn finish(mut self) -> String {
        let rest = self.masker.finish();
        self.emit(rest).await;
        if let Some((tx, task)) = self.writer.take() {
            drop(tx);
            let _ = task.await;
        }
        self.tail.finish()
    }
}

impl StepLog {
    async fn emit(&mut self, shown: String) {
        if shown.is_empty() {
            return;
        }
        self.tail.push(&shown);
        if let Some((tx, _)) = &self.writer {
            // Backpressure: a full channel waits for the writer.
            let _ = tx.send(shown).await;
        }
    }
}

#[async_trait::async_trait]
impl Output for StepLog {
    async fn write(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let shown = self.masker.push(text);
        self.emit(shown).await;
    }
}

/// The writer task: batches, stores up to the cap, keeps the end past it.
async fn write(target: LogTarget, mut rx: mpsc::Receiver<String>) {
    let mut batch = String::new();
    let mut stored = 0usize;
    // Past the cap: the end of the output, and how much fell out of it.
    let mut end: Option<Tail> = None;
    let end_kept = END_KEPT.min(target.cap / 2);
    let mut tick = tokio::time::interval(BATCH_EVERY);
    loop {
        tokio::select! {
            text = rx.recv() => match text {
                Some(text) => {
                    let head_room = target.cap.saturating_sub(end_kept).saturating_sub(stored + batch.len());
                    if end.is_none() && text.len() <= head_room {
                        batch.push_str(&text);
                    } else {
                        end.get_or_insert_with(|| Tail::new(end_kept)).push(&text);
                    }
                    if batch.len() >= BATCH_MAX {
                        stored += flush(&target, &mut batch).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    stored += flush(&target, &mut batch).await;
                }
            }
        }
    }
    flush(&target, &mut batch).await;
    if let Some(mut end) = end {
        // `finish` puts the marker in front of what it kept; on a line of its own.
        let mut last = if end.dropped() > 0 {
            format!("\n{}", end.finish())
        } else {
            end.finish()
        };
        flush(&target, &mut last).await;
    }
}

/// Stores and announces `batch`, then clears it. Returns the bytes stored.
/// A failed write is logged and the output dropped: the step goes on, and
/// its own recorded transitions report a database outage.
async fn flush(target: &LogTarget, batch: &mut String) -> usize {
    if batch.is_empty() {
        return 0;
    }
    let n = batch.len();
    let stored = logs::append(
        &target.pool,
        &target.deployment_id,
        target.step.as_str(),
        target.attempt,
        batch,
    )
    .await;
    match stored {
        Ok(()) => announce(target, batch).await,
        Err(e) => tracing::warn!(
            app = %target.app, deployment.id = %target.deployment_id, step = %target.step,
            error = %e, "could not store step output"
        ),
    }
    batch.clear();
    n
}

/// `deploy.log`: the end of the batch, and how much of it was not sent.
async fn announce(target: &LogTarget, batch: &str) {
    let text = text::tail(batch, EVENT_TEXT);
    let event = Event::new(
        &target.app,
        EventBody::DeployLog(DeployLog {
            deployment_id: target.deployment_id.clone(),
            step: target.step,
            attempt: target.attempt,
            text: text.to_owned(),
            not_sent: (batch.len() - text.len()) as u64,
        }),
    );
    let sent = async {
        let mut conn = target.pool.acquire().await?;
        events::publish(&mut conn, &event).await
    };
    if let Err(e) = sent.await {
        tracing::debug!(error = %e, "could not send a deploy.log event");
    }
}
