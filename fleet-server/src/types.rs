//! The fleet's vocabulary: roles, device and rollout states, problems, actions. Every state
//! the store keeps, the API returns and the console shows is one of these enums; each has one
//! wire/database spelling (`as_str`, serde `snake_case`) and one parser.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a `snake_case` string enum with `as_str`, `ALL`, `Display` and `FromStr`.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The one spelling on the wire, in the database and in the console.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        expected: &[$($s),+],
                    }),
                }
            }
        }
    };
}

/// A string that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} (expected one of: {})", expected.join(", "))]
pub struct UnknownValue {
    /// What was being parsed (`role`, `device state`, …).
    pub what: &'static str,
    /// The string given.
    pub value: String,
    /// Every valid spelling.
    pub expected: &'static [&'static str],
}

string_enum! {
    /// What an operator account (or an API token) may do. Ordered: each role may do what the
    /// ones before it may.
    Role ("role") {
        /// Reads everything except accounts and other users' tokens; changes nothing.
        Viewer = "viewer",
        /// Also acts on the fleet: device labels and revocation, enrollment tokens, bundle
        /// pushes, rollouts, drift policies, alarm acknowledgement.
        Operator = "operator",
        /// Also manages accounts and every API token, and trusts signing keys.
        Admin = "admin",
    }
}

string_enum! {
    /// Whether a device is reachable, from the time of its last check-in.
    DeviceState ("device state") {
        /// Checked in within the server's `--online-within` (default three check-in intervals).
        Online = "online",
        /// Missed check-ins, but seen within `--offline-after` (default 10 minutes).
        Stale = "stale",
        /// Not seen for longer than that, or never since enrollment.
        Offline = "offline",
        /// Its certificate is refused.
        Revoked = "revoked",
    }
}

string_enum! {
    /// Something about a device an operator should look at. A device may have several.
    Problem ("problem") {
        /// Its last check-in reported an error (the agent clears it once a cycle succeeds).
        Error = "error",
        /// Its outbox backlog rose by more than 10 % (and 100 records) at each of its last
        /// three check-ins: it produces more than it can upload.
        BacklogGrowing = "backlog_growing",
        /// It dropped records under its outbox limits within the last hour.
        Drops = "drops",
        /// Its last model update failed or was rolled back.
        UpdateFailed = "update_failed",
        /// A drift or performance alarm of one of its models is raised.
        DriftAlarm = "drift_alarm",
    }
}

string_enum! {
    /// A rollout's state (operator actions and auto-halt move it).
    RolloutState ("rollout state") {
        /// Handed out to the devices of its current phase.
        Active = "active",
        /// Not handed out; devices keep what they run.
        Halted = "halted",
        /// Devices go back to the previous rollout's version.
        RolledBack = "rolled_back",
    }
}

string_enum! {
    /// What a rollout hands out.
    RolloutKind ("rollout kind") {
        /// A model bundle version (`bundle` names the bundle).
        Bundle = "bundle",
        /// An agent configuration version (`bundle` names the fleet configuration). A
        /// device runs one configuration: the newest rollout that reaches it decides.
        Config = "config",
        /// An agent software release (`bundle` is `edge-agent`; each device gets the
        /// release file for its target). The newest rollout that reaches a device decides.
        Agent = "agent",
    }
}

string_enum! {
    /// Which targeted devices an active rollout reaches.
    RolloutPhase ("rollout phase") {
        /// Only its canaries (a label or a stable percentage).
        Canary = "canary",
        /// Every targeted device.
        Full = "full",
    }
}

string_enum! {
    /// What an operator does to a rollout.
    RolloutAction ("rollout action") {
        /// Canary phase → every targeted device (active rollouts in their canary phase).
        Promote = "promote",
        /// Stop handing it out; devices keep what they run (active rollouts).
        Halt = "halt",
        /// Undo a halt.
        Resume = "resume",
        /// Devices go back to the previous rollout's version (active or halted rollouts).
        Rollback = "rollback",
    }
}

impl RolloutAction {
    /// The states the action applies to, and the state and phase it leaves.
    pub fn transition(self) -> (&'static [RolloutState], RolloutState, Option<RolloutPhase>) {
        use RolloutState::*;
        match self {
            RolloutAction::Promote => (&[Active], Active, Some(RolloutPhase::Full)),
            RolloutAction::Halt => (&[Active], Halted, None),
            RolloutAction::Resume => (&[Halted], Active, None),
            RolloutAction::Rollback => (&[Active, Halted], RolledBack, None),
        }
    }
}

string_enum! {
    /// Where one targeted device is in a rollout.
    DeviceRolloutState ("device rollout state") {
        /// Targeted, but not a canary while the rollout is in its canary phase.
        Waiting = "waiting",
        /// Its phase includes it; it has not checked in since, so it has not been told.
        Pending = "pending",
        /// Told at a check-in; it does not run the version yet.
        Downloading = "downloading",
        /// Runs the version without a report from this rollout: its health check is still
        /// running, or it ran the version already when it was targeted (nothing to install).
        Applied = "applied",
        /// Reported the version installed and healthy.
        Healthy = "healthy",
        /// Reported a failed update (download, delta or verification); runs what it ran.
        Failed = "failed",
        /// Installed it, failed the health check, and went back to its previous bundle.
        RolledBack = "rolled_back",
    }
}

string_enum! {
    /// How a device's model update ended (the device's report).
    UpdateOutcome ("update outcome") {
        /// Installed and healthy.
        Applied = "applied",
        /// Installed, then failed to load or its health check; the previous bundle runs again.
        RolledBack = "rolled_back",
        /// Never installed (download, delta or verification failed).
        Failed = "failed",
    }
}

impl From<edge_wire::sync::UpdateOutcome> for UpdateOutcome {
    fn from(o: edge_wire::sync::UpdateOutcome) -> Self {
        match o {
            edge_wire::sync::UpdateOutcome::Applied => UpdateOutcome::Applied,
            edge_wire::sync::UpdateOutcome::RolledBack => UpdateOutcome::RolledBack,
            edge_wire::sync::UpdateOutcome::Failed => UpdateOutcome::Failed,
        }
    }
}

impl UpdateOutcome {
    /// Where a device that reported this outcome stands in the rollout.
    pub fn rollout_state(self) -> DeviceRolloutState {
        match self {
            UpdateOutcome::Applied => DeviceRolloutState::Healthy,
            UpdateOutcome::RolledBack => DeviceRolloutState::RolledBack,
            UpdateOutcome::Failed => DeviceRolloutState::Failed,
        }
    }
}

string_enum! {
    /// What an alarm is about: the model's own score, or drift.
    AlarmKind ("alarm kind") {
        /// The model's score passed its threshold (the plant's anomaly).
        Model = "model",
        /// A feature column drifts from the bundle's reference.
        Column = "column",
        /// A model output drifts from what it gave on the training data.
        Output = "output",
        /// Enough feature columns drift at once (dataset drift).
        Dataset = "dataset",
        /// Accuracy, recall or MAE on late labels past its limit.
        Performance = "performance",
    }
}

impl AlarmKind {
    /// Drift and performance alarms (the device problem `drift_alarm`), not the model's own.
    pub fn is_drift(self) -> bool {
        self != AlarmKind::Model
    }
}

string_enum! {
    /// How the device list is ordered.
    DeviceSortKey ("device sort key") {
        /// Devices with problems first, then by name.
        Problems = "problems",
        /// Device name.
        Name = "name",
        /// Device id.
        Id = "id",
        /// Last check-in (the state follows from it).
        LastSeen = "last_seen",
        /// Enrollment time.
        EnrolledAt = "enrolled_at",
        /// Total outbox backlog at the last check-in.
        Backlog = "backlog",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_unknowns_name_the_choices() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
            assert_eq!(serde_json::to_string(r).unwrap(), format!("\"{r}\""));
        }
        for s in DeviceRolloutState::ALL {
            assert_eq!(s.as_str().parse::<DeviceRolloutState>().unwrap(), *s);
        }
        let e = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`root` is not a valid role (expected one of: viewer, operator, admin)"
        );
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(
            RolloutState::RolledBack.to_string(),
            serde_json::to_value(RolloutState::RolledBack).unwrap()
        );
    }
}
