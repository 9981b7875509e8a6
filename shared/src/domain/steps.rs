//! Step entries: what a deployment (or a forge) records about each step it
//! ran, in its row, its API answer and its live events. One type, so every
//! reader sees one shape.

use serde::{Deserialize, Serialize};

use super::{ForgeStep, Step, StepStatus};

/// One pipeline step of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepEntry {
    pub step: Step,
    pub status: StepStatus,
    /// Absent while the step runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The end of what the step printed (the whole log is at
    /// `GET /api/deployments/{id}/logs`); absent from lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The dump a complete `snapshot` step took: what a failed migration of
    /// this deployment restores, also after a resume on another worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl StepEntry {
    pub fn running(step: Step) -> Self {
        Self {
            step,
            status: StepStatus::Running,
            duration_ms: None,
            output: None,
            snapshot: None,
        }
    }

    pub fn ended(step: Step, status: StepStatus, output: &str, duration_ms: u64) -> Self {
        Self {
            step,
            status,
            duration_ms: Some(duration_ms),
            output: Some(output.to_owned()),
            snapshot: None,
        }
    }
}

/// Whether a forge operation provisions services or tears them down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgeOperation {
    Forge,
    Teardown,
}

impl ForgeOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forge => "forge",
            Self::Teardown => "teardown",
        }
    }
}

/// One step of a forge operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForgeStepEntry {
    pub step: ForgeStep,
    pub status: StepStatus,
    pub duration_ms: u64,
    pub output: String,
    pub operation: ForgeOperation,
}

/// What a deployment does: build and ship a commit, or put an earlier
/// deployment's image back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
        }
    }
}

impl TryFrom<String> for DeploymentKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "deploy" => Ok(Self::Deploy),
            "rollback" => Ok(Self::Rollback),
            _ => Err(format!("unknown deployment kind {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_written_before_the_snapshot_field_still_reads() {
        let old = serde_json::json!({"step": "snapshot", "status": "complete",
            "durationMs": 12, "output": "pg_dump -Fc db -> /x.dump"});
        let entry: StepEntry = serde_json::from_value(old).unwrap();
        assert_eq!(entry.step, Step::Snapshot);
        assert_eq!(entry.snapshot, None);
        let running = serde_json::to_value(StepEntry::running(Step::Build)).unwrap();
        assert_eq!(
            running,
            serde_json::json!({"step": "build", "status": "running"})
        );
    }

    #[test]
    fn kinds_read_back_from_their_column_text() {
        for kind in [DeploymentKind::Deploy, DeploymentKind::Rollback] {
            assert_eq!(DeploymentKind::try_from(kind.as_str().to_owned()), Ok(kind));
        }
        assert!(DeploymentKind::try_from("other".to_owned()).is_err());
    }
}
