//! How deploys of an app behave: `deployPolicy`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::{RawDeployPolicy, RawTimeouts};
use super::validate::{Errors, duration};

/// What happens to an older deploy that is still queued when a newer one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueuePolicy {
    /// The older one ends `failed` with `superseded by <id>`: only the newest runs.
    #[default]
    Supersede,
    /// Every queued deploy runs, in order.
    Fifo,
}

/// Per-app step deadlines; `None` falls back to the global setting.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTimeouts {
    #[serde(with = "opt_secs")]
    #[schema(value_type = Option<String>)]
    pub build: Option<Duration>,
    #[serde(with = "opt_secs")]
    #[schema(value_type = Option<String>)]
    pub test: Option<Duration>,
    #[serde(with = "opt_secs")]
    #[schema(value_type = Option<String>)]
    pub snapshot: Option<Duration>,
    #[serde(with = "opt_secs")]
    #[schema(value_type = Option<String>)]
    pub migrate: Option<Duration>,
    #[serde(with = "opt_secs")]
    #[schema(value_type = Option<String>)]
    pub healthy: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployPolicy {
    pub queue: QueuePolicy,
    pub auto_rollback: bool,
    pub restore_on_failed_migration: bool,
    pub timeouts: StepTimeouts,
}

impl Default for DeployPolicy {
    fn default() -> Self {
        DeployPolicy {
            queue: QueuePolicy::Supersede,
            auto_rollback: true,
            restore_on_failed_migration: true,
            timeouts: StepTimeouts::default(),
        }
    }
}

pub(super) fn policy(raw: Option<RawDeployPolicy>, errors: &mut Errors) -> DeployPolicy {
    let d = DeployPolicy::default();
    let Some(raw) = raw else { return d };
    let queue = match raw.queue.as_deref() {
        None | Some("supersede") => QueuePolicy::Supersede,
        Some("fifo") => QueuePolicy::Fifo,
        Some(other) => {
            errors.push(
                "deployPolicy.queue",
                format!("{other:?} is not one of supersede, fifo"),
            );
            d.queue
        }
    };
    DeployPolicy {
        queue,
        auto_rollback: raw.auto_rollback.unwrap_or(d.auto_rollback),
        restore_on_failed_migration: raw
            .restore_on_failed_migration
            .unwrap_or(d.restore_on_failed_migration),
        timeouts: timeouts(raw.timeouts, errors),
    }
}

fn timeouts(raw: Option<RawTimeouts>, errors: &mut Errors) -> StepTimeouts {
    let Some(raw) = raw else {
        return StepTimeouts::default();
    };
    let mut one = |value: Option<super::raw::Scalar>, step: &str| {
        value.map(|v| {
            duration(
                Some(v),
                Duration::ZERO,
                &format!("deployPolicy.timeouts.{step}"),
                errors,
            )
        })
    };
    StepTimeouts {
        build: one(raw.build, "build"),
        test: one(raw.test, "test"),
        snapshot: one(raw.snapshot, "snapshot"),
        migrate: one(raw.migrate, "migrate"),
        healthy: one(raw.healthy, "healthy"),
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::super::secs::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
