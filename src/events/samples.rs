//! Test deliveries (`sendTestWebHook`): a `ping`, or a sample of a kind of event rendered
//! through the endpoint's own selection and format, so that a receiver sees exactly what it
//! will get. A build or task sample is the organization's newest build (or that build's newest
//! task) as created; a published sample is the newest payload of that type, or `{}`.

use serde_json::json;

use super::Rendered;
use super::change::Change;
use super::outbox::Outbox;
use crate::domain::{EventAction, PayloadFormat};
use crate::store::entities::webhook_endpoint;
use crate::store::{self, Db};
use crate::{Error, Result};

/// What a test delivery sends: its `X-Cirrus-Event`, action and body.
pub struct TestDelivery {
    pub event: String,
    pub action: EventAction,
    pub body: String,
}

impl Outbox {
    /// The test delivery of `event` (`build`, `task` or a published type; a `ping` when none)
    /// for `endpoint`, read and rendered through `db`.
    pub async fn test_delivery(
        &self,
        db: Db,
        endpoint: &webhook_endpoint::Model,
        event: Option<&str>,
    ) -> Result<TestDelivery> {
        let org_id = endpoint.org_id;
        let format = endpoint.payload_format;
        let conn = db.conn();
        let change = match event.map(str::trim) {
            None | Some("") | Some("ping") => {
                return Ok(TestDelivery {
                    event: "ping".into(),
                    action: EventAction::Ping,
                    body: ping_body(endpoint),
                });
            }
            Some("build") => {
                let build = store::ci::newest_build(&conn, org_id).await?.ok_or_else(|| {
                    Error::Invalid(
                        "The organization has no build yet, so there is no build to send as a sample."
                            .into(),
                    )
                })?;
                Change::build_created(&build)
            }
            Some("task") => {
                let task = match store::ci::newest_build(&conn, org_id).await? {
                    Some(build) => store::ci::tasks_of_build(&conn, org_id, build.id)
                        .await?
                        .pop(),
                    None => None,
                };
                let task = task.ok_or_else(|| {
                    Error::Invalid(
                        "The organization's newest build has no task, so there is no task to send as a sample."
                            .into(),
                    )
                })?;
                Change::task_created(&task)
            }
            Some(kind) => {
                crate::domain::published::check_type(kind)?;
                let payload = store::published::latest_of_type(&conn, org_id, kind)
                    .await?
                    .map_or_else(|| "{}".to_owned(), |event| event.payload);
                return Ok(TestDelivery {
                    event: kind.to_owned(),
                    action: EventAction::Published,
                    body: super::published::body(format, kind, None, &payload),
                });
            }
        };
        let body = match self
            .renderer()
            .render(db, &change, endpoint.payload_query.as_deref(), format)
            .await?
        {
            Rendered::Body(body) => body,
            Rendered::Refused(reason) => return Err(Error::Invalid(reason)),
        };
        Ok(TestDelivery {
            event: change.kind.header_value().into(),
            action: change.action,
            body,
        })
    }
}

/// A `ping`'s body: it says which endpoint of which organization it tests. A status filter does
/// not hold it back, and a Slack endpoint gets a message saying the hook works.
fn ping_body(endpoint: &webhook_endpoint::Model) -> String {
    let now = crate::now_ms();
    let body = match endpoint.payload_format {
        PayloadFormat::Slack => crate::slack::ping_message(),
        PayloadFormat::Data => json!({
            "action": EventAction::Ping.as_str(),
            "data": { "ownerUid": endpoint.org_id.to_string(), "endpointId": endpoint.id.to_string(), "timestamp": now },
        }),
        // FLAT receivers read `repository`, `build` and `task` at the top level, as for any
        // event; the ping's own fields stand beside them, ids as numbers.
        PayloadFormat::Flat => json!({
            "action": EventAction::Ping.as_str(),
            "repository": {},
            "build": {},
            "task": {},
            "ownerUid": endpoint.org_id,
            "endpointId": endpoint.id,
            "timestamp": now,
        }),
        // No envelope: the ping's own fields, ids as numbers.
        PayloadFormat::Raw => json!({
            "ownerUid": endpoint.org_id,
            "endpointId": endpoint.id,
            "timestamp": now,
        }),
    };
    body.to_string()
}
