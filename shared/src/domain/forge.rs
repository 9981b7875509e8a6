//! The seeds' forge state machine: provisioning an app's services.
//! `unforged → forging → forged | forge_failed`; teardown
//! `forged → tearing_down → unforged | forge_failed`. Legal transitions live
//! here and nowhere else.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgeStatus {
    Unforged,
    Forging,
    Forged,
    ForgeFailed,
    TearingDown,
}

#[derive(Debug, thiserror::Error)]
#[error("illegal forge transition {from:?} -> {to:?}")]
pub struct IllegalForgeTransition {
    pub from: ForgeStatus,
    pub to: ForgeStatus,
}

impl ForgeStatus {
    pub const ALL: [ForgeStatus; 5] = [
        Self::Unforged,
        Self::Forging,
        Self::Forged,
        Self::ForgeFailed,
        Self::TearingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unforged => "unforged",
            Self::Forging => "forging",
            Self::Forged => "forged",
            Self::ForgeFailed => "forge_failed",
            Self::TearingDown => "tearing_down",
        }
    }

    /// An operation is running (another one must wait or get 409).
    pub fn is_busy(self) -> bool {
        matches!(self, Self::Forging | Self::TearingDown)
    }

    /// `forged → forging` re-forges (a spec that declares a new service);
    /// `forge_failed → forging` resumes; a failed forge may be torn down.
    pub fn can_become(self, to: Self) -> bool {
        use ForgeStatus::*;
        matches!(
            (self, to),
            (Unforged | Forged | ForgeFailed, Forging)
                | (Forging, Forged | ForgeFailed)
                | (Forged | ForgeFailed, TearingDown)
                | (TearingDown, Unforged | ForgeFailed)
        )
    }

    pub fn transition(self, to: Self) -> Result<Self, IllegalForgeTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalForgeTransition { from: self, to })
        }
    }
}

impl std::str::FromStr for ForgeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown forge status {s:?}"))
    }
}

impl std::fmt::Display for ForgeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The forge's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgeStep {
    Postgres,
    Kv,
    Events,
    Endpoints,
}

impl ForgeStep {
    pub const ALL: [ForgeStep; 4] = [Self::Postgres, Self::Kv, Self::Events, Self::Endpoints];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Kv => "kv",
            Self::Events => "events",
            Self::Endpoints => "endpoints",
        }
    }
}

/// What a forge operation made or left, per service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgedResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<ForgedPostgres>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<ForgedKv>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<ForgedEvents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<ForgedEndpoints>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgedPostgres {
    pub database: String,
    /// The app's login role (named after the database when absent: rows
    /// from before roles were recorded).
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgedKv {
    pub namespace: String,
    /// The app's user (derived from the namespace when absent).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgedEvents {
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgedEndpoints {
    pub hostnames: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::ForgeStatus::*;

    #[test]
    fn forge_transitions_follow_the_seed() {
        assert!(Unforged.can_become(Forging));
        assert!(Forging.can_become(Forged));
        assert!(Forging.can_become(ForgeFailed));
        assert!(ForgeFailed.can_become(Forging));
        assert!(Forged.can_become(TearingDown));
        assert!(TearingDown.can_become(Unforged));
        assert!(!Unforged.can_become(Forged));
        assert!(!Forging.can_become(Forging));
        assert!(!TearingDown.can_become(Forging));
        assert!(!Unforged.can_become(TearingDown));
        for s in super::ForgeStatus::ALL {
            assert_eq!(s.as_str().parse::<super::ForgeStatus>(), Ok(s));
        }
    }
}
