//! Running a selection for an event, and wrapping the result in its envelope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::{Request, Variables};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value as Json, json};

use super::change::Change;
use super::ids::IdFields;
use super::selection::{self, DEFAULT_SELECTION, Prepared};
use crate::domain::limits::MAX_BODY;
use crate::domain::{EventAction, PayloadFormat, Permission};
use crate::schema::rows::{Budget, Known, Settled};
use crate::schema::{self, Limits, QuerySchema, Viewer};
use crate::slack::SLACK_SELECTION;
use crate::store::Db;
use crate::{Error, Result};

/// Whether the selection an endpoint renders (its own, the default when `None`, or Slack's) may
/// read its build's tasks: through `Build.tasks` or `Task.uniqueLabels`, the only fields that
/// do. The test is on the text, so it may say yes for a selection that does not (a comment, an
/// alias), never no for one that does; and a payload that reads them without the batch having
/// read them reads them itself.
pub fn reads_build_tasks(source: Option<&str>, format: PayloadFormat) -> bool {
    let text = rendered_selection(source, format);
    text.contains("tasks") || text.contains("uniqueLabels")
}

/// The selection an endpoint's payload runs: Slack's own for the `SLACK` format, which ignores
/// the stored one; else the stored one, or the default when there is none.
fn rendered_selection(source: Option<&str>, format: PayloadFormat) -> &str {
    match format {
        PayloadFormat::Slack => SLACK_SELECTION,
        PayloadFormat::Data | PayloadFormat::Flat | PayloadFormat::Raw => {
            source.unwrap_or(DEFAULT_SELECTION)
        }
    }
}

/// A payload rendered for an event, or why it cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendered {
    Body(String),
    /// The reason, in one sentence.
    Refused(String),
}

/// How many distinct selections the cache keeps before it starts over.
const CACHE_CAPACITY: usize = 1024;

/// Renders payloads with the query-only schema, so that a stored selection cannot mutate;
/// parsed selections are cached by their text.
pub struct Renderer {
    schema: QuerySchema,
    cache: Mutex<HashMap<String, Arc<Prepared>>>,
    /// Repositories and organizations read by earlier payloads.
    settled: Arc<Settled>,
    /// Where Slack messages link builds and tasks (`HERALD_PUBLIC_URL`).
    public_url: Option<String>,
    /// The same, for `Build.webUrl` and `Task.webUrl`.
    links: schema::PublicUrl,
    /// Which fields are `ID`s, for FLAT bodies.
    ids: IdFields,
}

impl Renderer {
    /// A renderer whose Slack messages link to `public_url`, when given.
    pub fn new(public_url: Option<String>) -> Self {
        let schema = schema::query_schema(Limits::PAYLOAD);
        Self {
            ids: IdFields::from_sdl(&schema.sdl()),
            schema,
            cache: Mutex::default(),
            settled: Arc::default(),
            links: schema::PublicUrl::new(public_url.as_deref()),
            public_url,
        }
    }

    fn prepared(&self, source: &str) -> Result<Arc<Prepared>> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| Error::internal("the selection cache is poisoned"))?;
        if let Some(prepared) = cache.get(source) {
            return Ok(prepared.clone());
        }
        let prepared = Arc::new(selection::prepare(source)?);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(source.to_owned(), prepared.clone());
        Ok(prepared)
    }

    /// Checks a selection before it is saved: it parses, is one query, uses only the three
    /// variables, stays within the limits, and validates against the schema. The error names
    /// the problem and its position in the selection.
    pub async fn check(&self, source: &str, db: &DatabaseConnection) -> Result<()> {
        let prepared = self.prepared(source)?;
        // Run against ids that name nothing: validation happens before any resolver, and the
        // resolvers then find nothing. Errors without a path are validation errors.
        let viewer = Viewer {
            org_id: -1,
            permission: Permission::Read,
        };
        let variables = json!({ "repositoryId": "0", "buildId": "0", "taskId": null });
        let budget = Arc::new(Budget::new(Limits::PAYLOAD.rows));
        let response = self
            .run(
                &prepared,
                Db::Pool(db.clone()),
                viewer,
                variables,
                None,
                budget,
            )
            .await;
        match response.errors.iter().find(|error| error.path.is_empty()) {
            None => Ok(()),
            Some(error) => {
                let at = error
                    .locations
                    .first()
                    .map(|pos| format!(" at {}", prepared.locate(*pos)))
                    .unwrap_or_default();
                Err(Error::Invalid(format!(
                    "The payload selection is not valid{at}: {}.",
                    error.message.trim_end_matches('.')
                )))
            }
        }
    }

    /// Renders the body of `change` for an endpoint's selection (the default when `None`),
    /// reading through `db`: the change's own transaction when the event is recorded. The
    /// `SLACK` format always runs its own fixed selection. A selection that reads more rows
    /// than a payload may, or a body larger than a delivery may carry, is refused with the
    /// reason: its delivery is recorded as failed, never sent.
    pub async fn render(
        &self,
        db: Db,
        change: &Change,
        source: Option<&str>,
        format: PayloadFormat,
    ) -> Result<Rendered> {
        let prepared = self.prepared(rendered_selection(source, format))?;
        let viewer = Viewer {
            org_id: change.org_id.get(),
            permission: Permission::Read,
        };
        let variables = json!({
            "repositoryId": change.repository_id.to_string(),
            "buildId": change.build_id.to_string(),
            "taskId": change.task_id.map(|id| id.to_string()),
        });
        let known = Known {
            build: change.build_row.clone(),
            task: change.task_row.clone(),
            build_tasks: change.build_tasks.clone(),
            settled: self.settled.clone(),
        };
        let budget = Arc::new(Budget::new(Limits::PAYLOAD.rows));
        let response = self
            .run(
                &prepared,
                db,
                viewer,
                variables,
                Some(known),
                budget.clone(),
            )
            .await;
        if budget.exceeded() {
            return Ok(Rendered::Refused(format!(
                "The payload selection reads more than {} rows; it was not sent.",
                Limits::PAYLOAD.rows
            )));
        }
        for error in &response.errors {
            tracing::warn!(org = %change.org_id, error = %error.message, "payload selection reported an error");
        }
        let data = response.data.into_json().map_err(Error::internal)?;
        let mut data = selection::in_selection_order(data, &prepared.doc);
        if matches!(format, PayloadFormat::Flat | PayloadFormat::Raw) {
            data = self.ids.numbers(data, &prepared.doc);
        }
        let body = if format == PayloadFormat::Slack {
            let message = crate::slack::from_data(
                change.kind.header_value(),
                change.action.as_str(),
                change.old_status,
                &data,
                self.public_url.as_deref(),
            );
            serde_json::to_string(&message).map_err(Error::internal)?
        } else {
            envelope(format, change.action, change.old_status, data)?
        };
        if body.len() > MAX_BODY {
            return Ok(Rendered::Refused(format!(
                "The payload is {} KiB, more than the {} KiB a delivery may carry; it was not sent.",
                body.len().div_ceil(1024),
                MAX_BODY / 1024
            )));
        }
        Ok(Rendered::Body(body))
    }

    async fn run(
        &self,
        prepared: &Prepared,
        db: Db,
        viewer: Viewer,
        variables: Json,
        known: Option<Known>,
        budget: Arc<Budget>,
    ) -> async_graphql::Response {
        let mut request = Request::new(prepared.text.clone())
            .variables(Variables::from_json(variables))
            .data(db)
            .data(viewer)
            .data(budget)
            .data(self.links.clone());
        if let Some(known) = known {
            request = request.data(known);
        }
        request.set_parsed_query(prepared.doc.clone());
        schema::execute(&self.schema, request).await
    }
}

/// Wraps a selection's result: `{action, old_status?, data}` (DATA) or
/// `{action, old_status?, …data's fields}` (FLAT, where a null field becomes `{}` as Cirrus
/// sends `"task": {}` for build events). RAW has no envelope: the result, or its one top-level
/// field's value. A Slack message has no envelope either: see [`crate::slack`].
pub fn envelope(
    format: PayloadFormat,
    action: EventAction,
    old_status: Option<&str>,
    data: Json,
) -> Result<String> {
    if format == PayloadFormat::Raw {
        let body = match data {
            Json::Object(fields) if fields.len() == 1 => fields
                .into_iter()
                .next()
                .map(|(_, value)| value)
                .unwrap_or_default(),
            other => other,
        };
        return serde_json::to_string(&body).map_err(Error::internal);
    }
    let mut body = Map::new();
    body.insert("action".into(), action.as_str().into());
    if let Some(old_status) = old_status {
        body.insert("old_status".into(), old_status.into());
    }
    match format {
        PayloadFormat::Data => {
            body.insert("data".into(), data);
        }
        PayloadFormat::Flat => {
            if let Json::Object(fields) = data {
                for (key, value) in fields {
                    body.insert(key, if value.is_null() { json!({}) } else { value });
                }
            }
        }
        PayloadFormat::Slack | PayloadFormat::Raw => {
            return Err(Error::internal(
                "a Slack message is built by the Slack formatter, not wrapped in an envelope",
            ));
        }
    }
    serde_json::to_string(&body).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slack_selection_is_a_valid_selection() {
        selection::prepare(SLACK_SELECTION).unwrap();
    }

    #[test]
    fn only_selections_naming_a_field_that_reads_them_read_the_builds_tasks() {
        let data = PayloadFormat::Data;
        assert!(reads_build_tasks(None, data), "the default's uniqueLabels");
        assert!(reads_build_tasks(
            Some("build(id: $buildId) { tasks { name } }"),
            data
        ));
        assert!(reads_build_tasks(
            Some("task(id: $taskId) { l: uniqueLabels }"),
            data
        ));
        assert!(!reads_build_tasks(
            Some("task(id: $taskId) { id status }"),
            data
        ));
        assert!(!reads_build_tasks(None, PayloadFormat::Slack));
        assert!(
            !reads_build_tasks(
                Some("build(id: $buildId) { tasks { id } }"),
                PayloadFormat::Slack
            ),
            "Slack's own selection is rendered, not the stored one"
        );
    }

    #[test]
    fn data_envelope_puts_action_first() {
        let body = envelope(
            PayloadFormat::Data,
            EventAction::Updated,
            Some("EXECUTING"),
            json!({"build": {"id": "1"}}),
        )
        .unwrap();
        assert_eq!(
            body,
            r#"{"action":"updated","old_status":"EXECUTING","data":{"build":{"id":"1"}}}"#
        );
    }

    #[test]
    fn raw_sends_the_one_top_level_field_or_the_whole_result() {
        let one = envelope(
            PayloadFormat::Raw,
            EventAction::Created,
            Some("CREATED"),
            json!({"build": {"build_id": 7, "runs": []}}),
        )
        .unwrap();
        assert_eq!(one, r#"{"build_id":7,"runs":[]}"#);
        let two = envelope(
            PayloadFormat::Raw,
            EventAction::Created,
            None,
            json!({"build": {"id": 7}, "task": null}),
        )
        .unwrap();
        assert_eq!(two, r#"{"build":{"id":7},"task":null}"#);
    }

    #[test]
    fn flat_envelope_spreads_data_and_empties_nulls() {
        let body = envelope(
            PayloadFormat::Flat,
            EventAction::Created,
            None,
            json!({"build": {"id": "1"}, "task": null}),
        )
        .unwrap();
        assert_eq!(body, r#"{"action":"created","build":{"id":"1"},"task":{}}"#);
    }
}
