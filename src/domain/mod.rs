//! Plain types and rules, free of I/O: ids, statuses, event actions, permissions, endpoint URLs,
//! retry policy, limits, transitions.

pub mod endpoint;
pub mod event;
pub mod headers;
pub mod ids;
pub mod limits;
pub mod published;
pub mod retry;
pub mod status;
pub mod transition;

pub use endpoint::{EndpointUrl, mask_secret};
pub use event::EventAction;
pub use ids::{BuildId, DeliveryId, EndpointId, OrgId, RepositoryId, TaskId};
pub use retry::RetrySchedule;
pub use status::{
    ApprovalDecision, ApprovalPoint, BuildStatus, DeliveryState, EventKind, NotificationLevel,
    PayloadFormat, Permission, SignatureStyle, TaskStatus, WebHookCondition, WhenUnavailable,
};

/// A note attached to a task, such as "Instances got rescheduled".
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::SimpleObject,
)]
pub struct Notification {
    pub level: NotificationLevel,
    pub message: String,
    pub link: Option<String>,
}

/// Seconds between a start and an end in milliseconds, never negative.
pub fn seconds_between(start_ms: i64, end_ms: i64) -> i64 {
    (end_ms - start_ms).max(0) / 1000
}
