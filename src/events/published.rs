//! Published events: any event type a platform announces (`deployment`, `PostDeployment`,
//! `push`, …), recorded and queued in one transaction like a CI event. With a subject, the
//! deliveries of one endpoint for that subject are sent in order, as a build's are.
//!
//! The body is the payload itself for FLAT and RAW endpoints, and `{"action": "published",
//! "data": <payload>}` for DATA ones; `X-Cirrus-Event` is the type as published.

use serde_json::{Value as Json, json};

use sea_orm::ConnectionTrait;

use crate::domain::limits::MAX_BODY;
use crate::domain::published::{self, MAX_PAYLOAD};
use crate::domain::{EventAction, PayloadFormat};
use crate::slack::escape;
use crate::store::deliveries::{EventDeliveries, FailedDelivery, NewDelivery, Numbers};
use crate::store::entities::{published_event, webhook_endpoint};
use crate::store::published::NewPublished;
use crate::{Error, Result, store};

/// An event to publish, as the API received it.
pub struct Publication {
    pub org_id: i64,
    pub kind: String,
    pub subject: Option<String>,
    pub payload: Json,
}

impl Publication {
    /// Checks the type, the subject and the payload (a JSON object of at most
    /// [`MAX_PAYLOAD`] bytes), and returns the payload as compact JSON text.
    pub fn check(&self) -> Result<String> {
        published::check_type(&self.kind)?;
        if let Some(subject) = &self.subject {
            published::check_subject(subject)?;
        }
        if !self.payload.is_object() {
            return Err(Error::Invalid("The payload must be a JSON object.".into()));
        }
        let text = serde_json::to_string(&self.payload).map_err(Error::internal)?;
        if text.len() > MAX_PAYLOAD {
            return Err(Error::Invalid(format!(
                "The payload is {} KiB, more than the {} KiB an event may carry.",
                text.len().div_ceil(1024),
                MAX_PAYLOAD / 1024
            )));
        }
        Ok(text)
    }
}

/// The body of a published event for an endpoint of `format`.
pub fn body(format: PayloadFormat, kind: &str, subject: Option<&str>, payload: &str) -> String {
    match format {
        PayloadFormat::Data => format!(
            "{{\"action\":\"{}\",\"data\":{payload}}}",
            EventAction::Published.as_str()
        ),
        PayloadFormat::Flat | PayloadFormat::Raw => payload.to_owned(),
        PayloadFormat::Slack => {
            let about = subject
                .map(|subject| format!(" for {}", escape(subject)))
                .unwrap_or_default();
            json!({ "text": format!(":satellite_antenna: {} published{about}", escape(kind)) })
                .to_string()
        }
    }
}

/// Records `publication` (checked, its payload `payload`) and queues a delivery to each of
/// `endpoints` (the organization's enabled ones) that subscribes to its type, numbered by
/// `numbers` (written back by the caller) and announced as `announcer`. Returns the event, how
/// many deliveries it queued, and whether one is due now.
pub async fn publish(
    conn: &impl ConnectionTrait,
    announcer: &str,
    publication: Publication,
    payload: String,
    endpoints: &[webhook_endpoint::Model],
    numbers: &mut Numbers,
) -> Result<(published_event::Model, usize, bool)> {
    let Publication {
        org_id,
        kind,
        subject,
        ..
    } = publication;
    let event = store::published::insert(
        conn,
        NewPublished {
            org_id,
            kind,
            subject,
            payload,
            timestamp: crate::now_ms(),
        },
    )
    .await?;
    let mut bodies = Vec::new();
    let mut refused = Vec::new();
    for endpoint in endpoints.iter().filter(|e| e.org_id == org_id) {
        if store::endpoints::subscribes_to_published(endpoint, &event.kind)? {
            let body = body(
                endpoint.payload_format,
                &event.kind,
                event.subject.as_deref(),
                &event.payload,
            );
            // A payload at the limit, wrapped in DATA's envelope, is past what a delivery
            // may carry: recorded as failed, with the reason, as any payload too large.
            if body.len() > MAX_BODY {
                refused.push(FailedDelivery {
                    delivery: NewDelivery {
                        org_id: org_id.into(),
                        endpoint_id: endpoint.id.into(),
                        event: event.kind.clone(),
                        action: EventAction::Published,
                        body: String::new(),
                        timestamp: event.timestamp,
                    },
                    event_id: None,
                    build_id: None,
                    reason: format!(
                        "The payload is {} KiB with its envelope, more than the {} KiB a delivery may carry; it was not sent.",
                        body.len().div_ceil(1024),
                        MAX_BODY / 1024
                    ),
                });
                continue;
            }
            bodies.push((endpoint.id, body));
        }
    }
    store::deliveries::insert_failed(conn, refused).await?;
    let count = bodies.len();
    if count == 0 {
        return Ok((event, 0, false));
    }
    let due = match &event.subject {
        Some(subject) => {
            let chain = published::subject_chain(org_id, subject);
            store::deliveries::lock_chains(conn, &[chain]).await?;
            let deliveries = EventDeliveries {
                org_id: org_id.into(),
                event_id: None,
                chain,
                event: &event.kind,
                action: EventAction::Published,
                timestamp: event.timestamp,
                work_id: None,
                bodies,
            };
            store::deliveries::queue_events(conn, &[deliveries], numbers, announcer).await?
        }
        None => {
            let new = bodies
                .into_iter()
                .map(|(endpoint_id, body)| NewDelivery {
                    org_id: org_id.into(),
                    endpoint_id: endpoint_id.into(),
                    event: event.kind.clone(),
                    action: EventAction::Published,
                    body,
                    timestamp: event.timestamp,
                })
                .collect();
            store::deliveries::insert_unchained(conn, new, numbers).await?;
            store::deliveries::announce(conn, announcer).await?;
            true
        }
    };
    Ok((event, count, due))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_payload_as_it_was_published() {
        let payload = r#"{"id":"cd5b","status":"success"}"#;
        assert_eq!(
            body(PayloadFormat::Raw, "PostDeployment", None, payload),
            payload
        );
        assert_eq!(
            body(PayloadFormat::Flat, "PostDeployment", None, payload),
            payload
        );
        let data: Json =
            serde_json::from_str(&body(PayloadFormat::Data, "PostDeployment", None, payload))
                .unwrap();
        assert_eq!(
            data,
            json!({"action": "published", "data": {"id": "cd5b", "status": "success"}})
        );
        let slack: Json = serde_json::from_str(&body(
            PayloadFormat::Slack,
            "deploy",
            Some("<prod>"),
            payload,
        ))
        .unwrap();
        assert_eq!(
            slack["text"],
            ":satellite_antenna: deploy published for &lt;prod&gt;"
        );
    }

    #[test]
    fn payloads_are_objects_of_bounded_size() {
        let publication = |payload| Publication {
            org_id: 1,
            kind: "deployment".into(),
            subject: None,
            payload,
        };
        assert!(publication(json!([1])).check().is_err());
        assert!(
            publication(json!({"x": "y".repeat(MAX_PAYLOAD)}))
                .check()
                .is_err()
        );
        assert_eq!(
            publication(json!({"b": 1, "a": 2})).check().unwrap(),
            r#"{"b":1,"a":2}"#
        );
    }
}
