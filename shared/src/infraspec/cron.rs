//! How a scheduled process runs: `processes.<name>.cron`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::RawCron;
use super::validate::{Errors, duration};

/// What to do with a tick while the previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the new tick and record that it was skipped.
    #[default]
    Forbid,
    Allow,
    /// Kill the running execution and start the new one.
    Replace,
}

/// What to do with ticks that passed while no scheduler was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One run for all of them.
    #[default]
    Coalesce,
    /// Every missed tick runs, at most `catchUpLimit` of the newest.
    CatchUp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronPolicy {
    #[serde(with = "super::secs")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    /// A tick later than this (no scheduler running, no worker free) counts as missed.
    #[serde(with = "super::secs")]
    #[schema(value_type = String)]
    pub grace: Duration,
    pub overlap: Overlap,
    pub missed: Missed,
    pub catch_up_limit: u32,
    pub memory_mb: u32,
    pub cpus: f64,
    pub pids: i64,
}

impl Default for CronPolicy {
    fn default() -> Self {
        CronPolicy {
            timeout: Duration::from_secs(300),
            grace: Duration::from_secs(30),
            overlap: Overlap::Forbid,
            missed: Missed::Coalesce,
            catch_up_limit: 10,
            memory_mb: 256,
            cpus: 1.0,
            pids: 256,
        }
    }
}

fn ranged(
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
    field: &str,
    errors: &mut Errors,
) -> i64 {
    match value {
        None => default,
        Some(v) if range.contains(&v) => v,
        Some(_) => {
            errors.push(field, format!("must be {}..{}", range.start(), range.end()));
            default
        }
    }
}

pub(super) fn policy(raw: RawCron, path: &str, errors: &mut Errors) -> CronPolicy {
    let d = CronPolicy::default();
    let overlap = match raw.overlap.as_deref() {
        None | Some("forbid") => Overlap::Forbid,
        Some("allow") => Overlap::Allow,
        Some("replace") => Overlap::Replace,
        Some(other) => {
            errors.push(
                format!("{path}.overlap"),
                format!("{other:?} is not one of forbid, allow, replace"),
            );
            d.overlap
        }
    };
    let missed = match raw.missed.as_deref() {
        None | Some("coalesce") => Missed::Coalesce,
        Some("catch_up") => Missed::CatchUp,
        Some(other) => {
            errors.push(
                format!("{path}.missed"),
                format!("{other:?} is not one of coalesce, catch_up"),
            );
            d.missed
        }
    };
    let cpus = match raw.cpus {
        None => d.cpus,
        Some(c) if c > 0.0 && c <= 64.0 => c,
        Some(_) => {
            errors.push(
                format!("{path}.cpus"),
                "must be greater than 0 and at most 64",
            );
            d.cpus
        }
    };
    CronPolicy {
        timeout: duration(raw.timeout, d.timeout, &format!("{path}.timeout"), errors),
        grace: duration(raw.grace, d.grace, &format!("{path}.grace"), errors),
        overlap,
        missed,
        catch_up_limit: ranged(
            raw.catch_up_limit,
            1..=1000,
            10,
            &format!("{path}.catchUpLimit"),
            errors,
        ) as u32,
        memory_mb: ranged(
            raw.memory,
            16..=65536,
            256,
            &format!("{path}.memory"),
            errors,
        ) as u32,
        cpus,
        pids: ranged(raw.pids, 16..=65536, 256, &format!("{path}.pids"), errors),
    }
}
