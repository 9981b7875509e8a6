use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The seed's deployment state machine. Legal transitions live here and
/// nowhere else; the database layer asks [`DeploymentStatus::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Queued,
    Building,
    Testing,
    Snapshotting,
    Migrating,
    Deploying,
    Deployed,
    Failed,
    RolledBack,
}

#[derive(Debug, thiserror::Error)]
#[error("illegal deployment transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: DeploymentStatus,
    pub to: DeploymentStatus,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 9] = [
        Self::Queued,
        Self::Building,
        Self::Testing,
        Self::Snapshotting,
        Self::Migrating,
        Self::Deploying,
        Self::Deployed,
        Self::Failed,
        Self::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Testing => "testing",
            Self::Snapshotting => "snapshotting",
            Self::Migrating => "migrating",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Deployed | Self::Failed | Self::RolledBack)
    }

    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Building => 1,
            Self::Testing => 2,
            Self::Snapshotting => 3,
            Self::Migrating => 4,
            Self::Deploying => 5,
            Self::Deployed => 6,
            Self::Failed | Self::RolledBack => 7,
        }
    }

    /// Forward along the pipeline (steps may be skipped, a status may repeat
    /// when a step is re-run), any non-terminal state to `failed`, and
    /// `deployed` to `rolled_back`.
    pub fn can_become(self, to: Self) -> bool {
        match (self, to) {
            (Self::Deployed, Self::RolledBack) => true,
            (from, _) if from.is_terminal() => false,
            (_, Self::Failed) => true,
            (_, Self::RolledBack) => false,
            (from, to) => to.rank() >= from.rank(),
        }
    }

    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The member of `all` whose name is `s`, or an error listing the names.
fn by_name<T: Copy>(
    s: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
) -> Result<T, String> {
    all.iter().copied().find(|v| name(*v) == s).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|v| name(*v)).collect();
        format!("unknown {what} {s:?}; expected one of {}", names.join(", "))
    })
}

impl TryFrom<String> for DeploymentStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for DeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(s, &Self::ALL, Self::as_str, "status")
    }
}

/// The deploy pipeline's steps, in order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Provisions the app's services (`crate::domain::ForgeStatus`) when
    /// they are not forged yet.
    Forge,
    Clone,
    Build,
    Test,
    Snapshot,
    Migrate,
    Deploy,
    Healthy,
    Cleanup,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forge => "forge",
            Self::Clone => "clone",
            Self::Build => "build",
            Self::Test => "test",
            Self::Snapshot => "snapshot",
            Self::Migrate => "migrate",
            Self::Deploy => "deploy",
            Self::Healthy => "healthy",
            Self::Cleanup => "cleanup",
        }
    }

    /// The deployment status while this step runs.
    pub fn status(self) -> DeploymentStatus {
        match self {
            Self::Forge | Self::Clone | Self::Build => DeploymentStatus::Building,
            Self::Test => DeploymentStatus::Testing,
            Self::Snapshot => DeploymentStatus::Snapshotting,
            Self::Migrate => DeploymentStatus::Migrating,
            Self::Deploy | Self::Healthy | Self::Cleanup => DeploymentStatus::Deploying,
        }
    }
}

impl Step {
    /// In pipeline order.
    pub const ALL: [Step; 9] = [
        Self::Forge,
        Self::Clone,
        Self::Build,
        Self::Test,
        Self::Snapshot,
        Self::Migrate,
        Self::Deploy,
        Self::Healthy,
        Self::Cleanup,
    ];
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(s, &Self::ALL, Self::as_str, "step")
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Complete,
    Skipped,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::DeploymentStatus::*;

    #[test]
    fn transitions() {
        assert!(Queued.can_become(Building));
        assert!(Building.can_become(Building));
        assert!(Building.can_become(Migrating));
        assert!(Migrating.can_become(Failed));
        assert!(Deployed.can_become(RolledBack));
        assert!(!Testing.can_become(Building));
        assert!(!Failed.can_become(Deployed));
        assert!(!Deployed.can_become(Failed));
        assert!(!Queued.can_become(RolledBack));
    }

    #[test]
    fn round_trip() {
        for s in super::DeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<super::DeploymentStatus>(), Ok(s));
        }
        assert!("paused".parse::<super::DeploymentStatus>().is_err());
    }
}
