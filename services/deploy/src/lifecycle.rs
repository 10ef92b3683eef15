//! The deployment state machine: every state change goes through
//! [`State::can_move`].
//!
//! ```text
//! QUEUED ──claim──▶ BUILDING ──▶ DEPLOYING ──▶ LIVE ──newer goes live──▶ SUPERSEDED
//!   │                 │  ▲           │  ▲          │
//!   │                 │  └─lease─────┼──┘          └──kept exiting──▶ CRASHED
//!   │                 │   expired    │     (a runner that stops heartbeating
//!   ▼                 ▼              ▼      gives the deployment back: QUEUED)
//! CANCELED      FAILED / CANCELED  FAILED / CANCELED
//! ```

use capsule::proto::deploy::v1::DeploymentState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Building,
    Deploying,
    Live,
    Failed,
    Canceled,
    Superseded,
    Crashed,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Deploying => "deploying",
            Self::Live => "live",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Superseded => "superseded",
            Self::Crashed => "crashed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "queued" => Self::Queued,
            "building" => Self::Building,
            "deploying" => Self::Deploying,
            "live" => Self::Live,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "superseded" => Self::Superseded,
            "crashed" => Self::Crashed,
            _ => return None,
        })
    }

    pub fn proto(self) -> DeploymentState {
        match self {
            Self::Queued => DeploymentState::Queued,
            Self::Building => DeploymentState::Building,
            Self::Deploying => DeploymentState::Deploying,
            Self::Live => DeploymentState::Live,
            Self::Failed => DeploymentState::Failed,
            Self::Canceled => DeploymentState::Canceled,
            Self::Superseded => DeploymentState::Superseded,
            Self::Crashed => DeploymentState::Crashed,
        }
    }

    pub fn from_proto(state: DeploymentState) -> Option<Self> {
        Some(match state {
            DeploymentState::Unspecified => return None,
            DeploymentState::Queued => Self::Queued,
            DeploymentState::Building => Self::Building,
            DeploymentState::Deploying => Self::Deploying,
            DeploymentState::Live => Self::Live,
            DeploymentState::Failed => Self::Failed,
            DeploymentState::Canceled => Self::Canceled,
            DeploymentState::Superseded => Self::Superseded,
            DeploymentState::Crashed => Self::Crashed,
        })
    }

    /// No runner works on it any more: its logs are complete.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Live | Self::Failed | Self::Canceled | Self::Superseded | Self::Crashed
        )
    }

    /// Nothing can happen to it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Failed | Self::Canceled | Self::Superseded | Self::Crashed)
    }

    /// Whether a deployment may go from `self` to `to`.
    pub fn can_move(self, to: State) -> bool {
        use State::{Building, Canceled, Crashed, Deploying, Failed, Live, Queued, Superseded};
        matches!(
            (self, to),
            (Queued, Building | Canceled)
                | (Building, Deploying | Failed | Canceled | Queued)
                | (Deploying, Live | Failed | Canceled | Queued)
                | (Live, Superseded | Crashed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::State::{self, *};

    const ALL: [State; 8] = [Queued, Building, Deploying, Live, Failed, Canceled, Superseded, Crashed];

    #[test]
    fn final_states_go_nowhere_and_the_happy_path_is_allowed() {
        for from in ALL.into_iter().filter(|s| s.is_final()) {
            assert!(ALL.iter().all(|to| !from.can_move(*to)), "{from:?}");
        }
        assert!(Queued.can_move(Building) && Building.can_move(Deploying) && Deploying.can_move(Live));
        assert!(Live.can_move(Superseded));
        assert!(!Queued.can_move(Live), "no skipping the build");
        assert!(!Live.can_move(Canceled), "a live deployment is replaced, not canceled");
        for state in ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
            assert_eq!(State::from_proto(state.proto()), Some(state));
        }
    }
}
