//! The enums of the API, each with the exact names of Cirrus CI's schema, stored as those names:
//! entities read and write them as these types (`DeriveActiveEnum`), never as bare strings.

use async_graphql::Enum;
use serde::{Deserialize, Serialize};

/// Declares a GraphQL enum whose values are stored in the database as their GraphQL names.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        #[derive(
            Enum, Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize,
            sea_orm::EnumIter, sea_orm::DeriveActiveEnum,
        )]
        #[sea_orm(rs_type = "String", db_type = "Text")]
        $(#[$meta])*
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[graphql(name = $text)]
                #[serde(rename = $text)]
                #[sea_orm(string_value = $text)]
                $variant
            ),+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name in the schema and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value with this name, if there is one.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// A build's status, recorded as the CI engine sends it.
    BuildStatus {
        Created = "CREATED",
        NeedsApproval = "NEEDS_APPROVAL",
        Triggered = "TRIGGERED",
        Executing = "EXECUTING",
        Failed = "FAILED",
        Completed = "COMPLETED",
        Aborted = "ABORTED",
        Errored = "ERRORED",
    }
);

named_enum!(
    /// A task's status, recorded as the CI engine sends it.
    TaskStatus {
        Created = "CREATED",
        Triggered = "TRIGGERED",
        Scheduled = "SCHEDULED",
        Executing = "EXECUTING",
        Aborted = "ABORTED",
        Failed = "FAILED",
        Completed = "COMPLETED",
        Skipped = "SKIPPED",
        Paused = "PAUSED",
    }
);

named_enum!(
    /// What a token may do; each level includes the ones before it.
    #[derive(PartialOrd, Ord)]
    #[graphql(name = "PermissionType")]
    Permission {
        None = "NONE",
        Read = "READ",
        Write = "WRITE",
        Admin = "ADMIN",
    }
);

named_enum!(
    /// The level of a task notification.
    NotificationLevel {
        Info = "INFO",
        Warning = "WARNING",
        Error = "ERROR",
    }
);

named_enum!(
    /// The kinds of event an endpoint can subscribe to. An endpoint that names none gets build
    /// and task events; audit and published events go only to endpoints that name them.
    #[graphql(name = "WebHookEventType")]
    EventKind {
        /// A build was created or changed status (`X-Cirrus-Event: build`).
        Build = "BUILD",
        /// A task was created or changed status (`X-Cirrus-Event: task`).
        Task = "TASK",
        /// A mutation was performed for the organization (`X-Cirrus-Event: audit_event`).
        AuditEvent = "AUDIT_EVENT",
        /// An event a platform published (`publishEvent`); `X-Cirrus-Event` is its type as
        /// published. The endpoint's `publishedEvents` narrows which types it gets.
        Published = "PUBLISHED",
    }
);

named_enum!(
    /// The shape of a delivery's body.
    #[graphql(name = "WebHookPayloadFormat")]
    PayloadFormat {
        /// `{action, old_status?, data}`: the documented Cirrus envelope; ids are strings, as
        /// GraphQL sends them.
        Data = "DATA",
        /// `{action, old_status?, repository, build, task}`: what Cirrus sends on the wire. As in
        /// Cirrus's bodies, every `ID` the selection reads whose value is a decimal integer
        /// (repository, build, task and user ids) is a JSON number, not a string.
        Flat = "FLAT",
        /// A Slack message (`text` and `blocks`) for an incoming-webhook URL, built from a fixed
        /// selection; the endpoint's `payloadQuery` is not used.
        Slack = "SLACK",
        /// No envelope: the selection's result itself, or, when the selection has one top-level
        /// field, that field's value, so that aliases give any shape (`build(id: $buildId) {
        /// build_id: id … }` sends `{"build_id": …}`). Decimal-integer `ID`s are numbers, as in
        /// FLAT. A published event's body is its payload.
        Raw = "RAW",
    }
);

named_enum!(
    /// The headers that authenticate a delivery, in the way a kind of receiver checks them. The
    /// identity headers (`X-Cirrus-Event`, `X-Cirrus-Delivery`, `X-Cirrus-Timestamp`,
    /// `webhook-id`, `webhook-timestamp`) are sent in every style, and `webhook-signature` in
    /// every style but `NONE` when a secret is set.
    #[graphql(name = "WebHookSignatureStyle")]
    SignatureStyle {
        /// `X-Cirrus-Signature: <hex HMAC-SHA256 of the body>`, as Cirrus CI sends.
        Cirrus = "CIRRUS",
        /// `X-Hub-Signature-256: sha256=<hex>`, `X-GitHub-Event`, `X-GitHub-Delivery`.
        Github = "GITHUB",
        /// `X-JobServ-Sig: sha256:<hex>`, as Foundries.io's jobserv sends.
        Jobserv = "JOBSERV",
        /// `X-Gitlab-Event: <Name> Hook` and the secret itself as `X-Gitlab-Token`.
        Gitlab = "GITLAB",
        /// `Codeup-Event: <Name> Hook` and the secret itself as `X-Codeup-Token`.
        Codeup = "CODEUP",
        /// No signature of any kind, as Kudu's hooks are sent.
        None = "NONE",
    }
);

named_enum!(
    /// How a finished build (or task) compares with the one of its repository and branch (and,
    /// for a task, of its name) that finished before it: the endpoint conditions that choose
    /// which changes are sent, and `Build.transition`.
    WebHookCondition {
        /// It failed (`FAILED` or `ERRORED`) after the previous one passed (`COMPLETED`).
        Broken = "BROKEN",
        /// It passed after the previous one failed.
        Fixed = "FIXED",
        /// It failed after the previous one failed.
        StillFailing = "STILL_FAILING",
        /// It failed, and none finished on its branch before it.
        FirstFailureOnBranch = "FIRST_FAILURE_ON_BRANCH",
    }
);

named_enum!(
    /// The moments an approval hook is asked at, before anything is recorded.
    ApprovalPoint {
        /// Before `createBuild` records a build.
        BuildCreate = "BUILD_CREATE",
        /// Before `createTask` records a task.
        TaskCreate = "TASK_CREATE",
    }
);

named_enum!(
    /// What an approval hook's silence decides: no valid answer within its timeout (a refused
    /// connection, a non-2xx status, an answer that is not the expected JSON).
    WhenUnavailable {
        /// The change is refused (fail closed).
        Reject = "REJECT",
        /// The change is recorded as asked.
        Approve = "APPROVE",
        /// A build is recorded `NEEDS_APPROVAL` (a task `PAUSED`) until someone decides.
        Hold = "HOLD",
    }
);

named_enum!(
    /// What an approval call decided.
    ApprovalDecision {
        Approved = "APPROVED",
        Held = "HELD",
        Rejected = "REJECTED",
    }
);

named_enum!(
    /// Where a delivery stands.
    #[graphql(name = "WebHookDeliveryState")]
    DeliveryState {
        /// Waiting for its first attempt (or a redelivery).
        Pending = "PENDING",
        /// An attempt failed; another is scheduled.
        Retrying = "RETRYING",
        /// A receiver answered 2xx.
        Delivered = "DELIVERED",
        /// The schedule is spent, or the endpoint answered 410 Gone.
        Failed = "FAILED",
    }
);

impl BuildStatus {
    /// A final status ends the build: it sets the final timestamp and the duration.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Aborted | Self::Errored
        )
    }
}

impl TaskStatus {
    /// A final status ends the task: it sets the final timestamp and the duration.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Aborted | Self::Failed | Self::Completed | Self::Skipped
        )
    }
}

impl EventKind {
    /// The `X-Cirrus-Event` value of this kind of event.
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Task => "task",
            Self::AuditEvent => "audit_event",
            Self::Published => "published",
        }
    }

    /// Whether an endpoint subscribed to `kinds` gets events of this kind: build and task
    /// events when it names none, every kind it names.
    pub fn is_in(self, kinds: &[EventKind]) -> bool {
        match self {
            Self::Build | Self::Task => kinds.is_empty() || kinds.contains(&self),
            Self::AuditEvent | Self::Published => kinds.contains(&self),
        }
    }
}

impl DeliveryState {
    /// Whether the worker is done with a delivery in this state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed)
    }
}

/// Whether `text` names a build or a task status (an endpoint's status filter holds such names).
pub fn is_status_name(text: &str) -> bool {
    BuildStatus::parse(text).is_some() || TaskStatus::parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(*status));
        }
        assert_eq!(
            BuildStatus::parse("NEEDS_APPROVAL"),
            Some(BuildStatus::NeedsApproval)
        );
        assert_eq!(BuildStatus::parse("needs_approval"), None);
    }

    #[test]
    fn permissions_are_ordered() {
        assert!(Permission::Read < Permission::Write && Permission::Write < Permission::Admin);
        assert!(Permission::None < Permission::Read);
    }
}
