//! The bounds every spec is held to (documented in the README). They keep
//! one app's spec from costing Norn more than a small, known amount: rows,
//! containers, environment blocks and timers all have a ceiling.

use std::time::Duration;

/// Every duration field (timeouts, intervals, cron grace).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
pub const MAX_PROCESSES: usize = 50;
pub const MAX_REPLICAS: i64 = 100;
/// A function's `concurrency`: runs of one function at once.
pub const MAX_FUNCTION_CONCURRENCY: i64 = 100;
/// A function's `warm`: containers kept ready per worker.
pub const MAX_FUNCTION_WARM: i64 = 10;
pub const MAX_ENV_ENTRIES: usize = 200;
/// Keys plus values of `env`.
pub const MAX_ENV_BYTES: usize = 65_536;
pub const MAX_SECRETS: usize = 100;
pub const MAX_TOPICS: usize = 100;
/// Commands: process commands, `build.test`, `migrations.command`.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Other free text: repository URL, Dockerfile and health paths, timezone.
pub const MAX_TEXT_BYTES: usize = 2048;

/// `Err` with the message when `text` is longer than `max` bytes.
pub(super) fn text(text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        Err(format!("must be at most {max} bytes (got {})", text.len()))
    } else {
        Ok(())
    }
}
