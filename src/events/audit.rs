//! Audit events: every mutation an organization performs is recorded in the mutation's own
//! transaction, as Cirrus CI's `graphql.mutation` audit events, and delivered to the endpoints
//! that name `AUDIT_EVENT` (`X-Cirrus-Event: audit_event`, `action: "created"`).
//!
//! An audit event's body is fixed, not a stored selection: Cirrus sends the same fragment
//! (`id type timestamp data actor repository`) to every receiver. Its `data` is the mutation's
//! name and input as a JSON string, with secrets removed before it is built (see
//! [`redact_input`]).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Map, Value as Json, json};

use sea_orm::ConnectionTrait;

use crate::domain::{EventAction, PayloadFormat};
use crate::slack::escape;
use crate::store::audit::{NewAuditEvent, UserKey};
use crate::store::deliveries::{NewDelivery, Numbers};
use crate::store::entities::{audit_event, webhook_endpoint};
use crate::{Error, Result, store};

/// The only type of audit event Herald records.
pub const MUTATION: &str = "graphql.mutation";

/// Who performs a request: the subject of its token, and the address it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub ip: Option<String>,
}

/// The longest user name Herald records.
pub const MAX_USER_NAME: usize = 200;

impl Actor {
    /// The actor a token's subject names: the subject as it is when it is a fit user name, else
    /// with control characters replaced and cut to [`MAX_USER_NAME`] characters (a subject is
    /// whatever the token's issuer wrote), and `api` when nothing is left.
    pub fn from_subject(subject: &str, ip: Option<String>) -> Self {
        let mut username: String = subject
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .take(MAX_USER_NAME)
            .collect();
        if username.trim().is_empty() {
            username = "api".into();
        }
        Self { username, ip }
    }
}

/// Checks a user name given in input (`createBuild`'s `initializer`).
pub fn check_user_name(field: &str, name: &str) -> Result<()> {
    let length = name.chars().count();
    if name.trim().is_empty() || length > MAX_USER_NAME || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "The {field} must have between 1 and {MAX_USER_NAME} characters, none of them control characters."
        )));
    }
    Ok(())
}

/// A mutation's audit event, before it is recorded with the mutation's change.
#[derive(Clone, Debug)]
pub struct AuditDraft {
    pub org_id: i64,
    pub actor: Actor,
    /// The mutation's name and input, secrets removed, as JSON text.
    pub data: String,
    /// The repository the mutation concerns, when it concerns one.
    pub repository_id: Option<i64>,
}

impl AuditDraft {
    /// The draft of mutation `name` (as in the schema, `createBuild`) with `input` (its
    /// argument as JSON, or null), for `actor` in organization `org_id`.
    pub fn new(org_id: i64, actor: Actor, name: &str, input: Json) -> Self {
        let mut data = Map::new();
        data.insert("mutationName".into(), pascal_case(name).into());
        if let Json::Object(fields) = redact_input(input) {
            data.extend(fields);
        }
        Self {
            org_id,
            actor,
            data: Json::Object(data).to_string(),
            repository_id: None,
        }
    }

    /// The user key of the actor.
    pub fn actor_key(&self) -> UserKey {
        (self.org_id, self.actor.username.clone())
    }
}

/// `createBuild` → `CreateBuild`, as Cirrus names mutations in audit events.
fn pascal_case(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Input fields that hold secrets; their values never reach an audit event.
const SECRET_FIELDS: [&str; 4] = ["secretToken", "secret", "value", "newValue"];

/// Input fields that hold a published payload, which an audit event records by size only: it
/// may be as large as a delivery.
const PAYLOAD_FIELDS: [&str; 1] = ["payload"];

/// Input fields that hold URLs, whose credentials never reach an audit event.
const URL_FIELDS: [&str; 2] = ["webhookURL", "url"];

/// A mutation's input with every secret replaced by `"[redacted]"` and the credentials of every
/// URL by `***`, at any depth.
pub fn redact_input(input: Json) -> Json {
    match input {
        Json::Object(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let value = if value.is_null() {
                        value
                    } else if SECRET_FIELDS.contains(&key.as_str()) {
                        Json::from("[redacted]")
                    } else if URL_FIELDS.contains(&key.as_str()) {
                        redact_url(value)
                    } else if PAYLOAD_FIELDS.contains(&key.as_str()) {
                        Json::from(format!("[{} bytes]", value.to_string().len()))
                    } else {
                        redact_input(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.into_iter().map(redact_input).collect()),
        other => other,
    }
}

/// A URL as an audit event keeps it: its scheme, host and port. Credentials become `***:***`
/// and any path or query `/***`, since a Slack incoming webhook's path is its token and many
/// receivers take a token in the query.
fn redact_url(value: Json) -> Json {
    let Json::String(text) = value else {
        return Json::from("[redacted]");
    };
    match url::Url::parse(&text) {
        Ok(url) if url.has_host() => {
            let mut kept = format!("{}://", url.scheme());
            if !url.username().is_empty() || url.password().is_some() {
                kept.push_str("***:***@");
            }
            kept.push_str(url.host_str().unwrap_or_default());
            if let Some(port) = url.port() {
                kept.push_str(&format!(":{port}"));
            }
            if url.path() != "/" || url.query().is_some() {
                kept.push_str("/***");
            }
            Json::from(kept)
        }
        // Not a URL with a host: the mutation refused it, so no audit event is recorded; should
        // one be, nothing of it is kept.
        _ => Json::from("[redacted]"),
    }
}

/// What an audit event's body shows of its repository.
#[derive(Clone, Debug)]
pub struct RepositoryInfo {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub is_private: bool,
}

/// The body of an audit event for an endpoint of `format`: DATA puts the event under `data`
/// with GraphQL's string ids; FLAT sends it at the top level, ids as numbers, beside empty
/// `repository` (when it concerns none), `build` and `task`, as Cirrus does; SLACK, a one-line
/// message.
pub fn body(
    format: PayloadFormat,
    event: &audit_event::Model,
    repository: Option<&RepositoryInfo>,
) -> Result<String> {
    let body = match format {
        PayloadFormat::Data => json!({
            "action": EventAction::Created.as_str(),
            "data": {
                "id": event.uid,
                "type": event.kind,
                "timestamp": event.timestamp,
                "data": event.data,
                "actor": { "id": event.actor_id.to_string(), "username": event.actor_username },
                "actorLocationIP": event.actor_ip,
                "repository": repository.map(|repo| json!({
                    "id": repo.id.to_string(),
                    "owner": repo.owner,
                    "name": repo.name,
                    "isPrivate": repo.is_private,
                })),
            },
        }),
        PayloadFormat::Flat => json!({
            "id": event.uid,
            "type": event.kind,
            "timestamp": event.timestamp,
            "data": event.data,
            "actor": { "id": event.actor_id, "username": event.actor_username },
            "actorLocationIp": event.actor_ip,
            "action": EventAction::Created.as_str(),
            "repository": repository.map_or_else(|| json!({}), |repo| json!({
                "id": repo.id,
                "owner": repo.owner,
                "name": repo.name,
                "isPrivate": repo.is_private,
            })),
            "build": {},
            "task": {},
        }),
        // No envelope: the event itself, ids as numbers.
        PayloadFormat::Raw => json!({
            "id": event.uid,
            "type": event.kind,
            "timestamp": event.timestamp,
            "data": event.data,
            "actor": { "id": event.actor_id, "username": event.actor_username },
            "actorLocationIp": event.actor_ip,
            "repository": repository.map(|repo| json!({
                "id": repo.id,
                "owner": repo.owner,
                "name": repo.name,
                "isPrivate": repo.is_private,
            })),
        }),
        PayloadFormat::Slack => {
            let data: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
            let mutation = data["mutationName"].as_str().unwrap_or("A mutation");
            let place = repository
                .map(|repo| format!(" on {}/{}", escape(&repo.owner), escape(&repo.name)))
                .unwrap_or_default();
            json!({
                "text": format!(
                    ":memo: {}{place} by {}",
                    escape(mutation),
                    escape(&event.actor_username)
                ),
            })
        }
    };
    serde_json::to_string(&body).map_err(Error::internal)
}

impl KnownUsers {
    /// The ids of these users, each created in `conn` if it is new. Hand them to
    /// [`KnownUsers::learn`] once the transaction commits.
    pub async fn ids(
        &self,
        conn: &impl ConnectionTrait,
        keys: Vec<UserKey>,
    ) -> Result<HashMap<UserKey, i64>> {
        let (mut ids, missing) = self.split(keys);
        if !missing.is_empty() {
            ids.extend(store::audit::ensure_users(conn, &missing, crate::now_ms()).await?);
        }
        Ok(ids)
    }
}

/// Records the audit events of `drafts`, whose actors `users` holds, and queues a delivery of
/// each to every endpoint of its organization among `endpoints` (the enabled endpoints of their
/// organizations) that names `AUDIT_EVENT`, numbered by `numbers` and announced as
/// `announcer`. Returns whether it queued any (they are due at once).
pub async fn record(
    conn: &impl ConnectionTrait,
    announcer: &str,
    drafts: Vec<AuditDraft>,
    users: &HashMap<UserKey, i64>,
    endpoints: &[webhook_endpoint::Model],
    numbers: &mut Numbers,
) -> Result<bool> {
    if drafts.is_empty() {
        return Ok(false);
    }
    let now = crate::now_ms();
    let mut new = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let actor_id = *users
            .get(&draft.actor_key())
            .ok_or_else(|| Error::internal("an audit event's actor has no user id"))?;
        new.push(NewAuditEvent {
            org_id: draft.org_id,
            kind: MUTATION,
            timestamp: now,
            data: draft.data,
            actor_id,
            actor_username: draft.actor.username,
            actor_ip: draft.actor.ip,
            repository_id: draft.repository_id,
        });
    }
    let events = store::audit::insert(conn, new).await?;
    let mut subscribed = Vec::new();
    for endpoint in endpoints {
        if store::endpoints::subscribes_to_audit(endpoint)? {
            subscribed.push(endpoint);
        }
    }
    let endpoints = subscribed;
    if endpoints.is_empty() {
        return Ok(false);
    }
    let mut repositories: HashMap<i64, Option<RepositoryInfo>> = HashMap::new();
    let mut deliveries = Vec::new();
    for event in &events {
        let to: Vec<_> = endpoints
            .iter()
            .filter(|endpoint| endpoint.org_id == event.org_id)
            .collect();
        if to.is_empty() {
            continue;
        }
        let repository = match event.repository_id {
            None => None,
            Some(id) => match repositories.get(&id) {
                Some(info) => info.clone(),
                None => {
                    let info = repository_info(conn, event.org_id, id).await?;
                    repositories.insert(id, info.clone());
                    info
                }
            },
        };
        for endpoint in to {
            let format = endpoint.payload_format;
            deliveries.push(NewDelivery {
                org_id: event.org_id.into(),
                endpoint_id: endpoint.id.into(),
                event: "audit_event".into(),
                action: EventAction::Created,
                body: body(format, event, repository.as_ref())?,
                timestamp: event.timestamp,
            });
        }
    }
    if deliveries.is_empty() {
        return Ok(false);
    }
    store::deliveries::insert_unchained(conn, deliveries, numbers).await?;
    store::deliveries::announce(conn, announcer).await?;
    Ok(true)
}

/// The repository an audit event concerns, as its body shows it; none if it is gone.
async fn repository_info(
    conn: &impl ConnectionTrait,
    org_id: i64,
    id: i64,
) -> Result<Option<RepositoryInfo>> {
    let repository = match store::ci::repository(conn, org_id, id).await {
        Ok(repository) => repository,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err),
    };
    let owner = store::orgs::find(conn, org_id)
        .await?
        .map(|org| org.name)
        .unwrap_or_default();
    Ok(Some(RepositoryInfo {
        id: repository.id,
        owner,
        name: repository.name,
        is_private: repository.is_private,
    }))
}

/// The ids of the users this process has recorded, so that a batch of changes by known actors
/// writes no user rows. Ids are learned only from committed transactions.
#[derive(Default)]
pub struct KnownUsers {
    ids: Mutex<HashMap<UserKey, i64>>,
}

impl KnownUsers {
    /// How many users the cache keeps before it starts over.
    const CAPACITY: usize = 100_000;

    /// The ids known of `keys`, and the keys not known.
    pub fn split(&self, keys: Vec<UserKey>) -> (HashMap<UserKey, i64>, Vec<UserKey>) {
        let ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            match ids.get(&key) {
                Some(id) => {
                    known.insert(key, *id);
                }
                None if !missing.contains(&key) => missing.push(key),
                None => {}
            }
        }
        (known, missing)
    }

    /// Remembers users whose rows a committed transaction holds.
    pub fn learn(&self, users: HashMap<UserKey, i64>) {
        if users.is_empty() {
            return;
        }
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ids.len() + users.len() > Self::CAPACITY {
            ids.clear();
        }
        ids.extend(users);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_credentials_never_reach_the_data() {
        let draft = AuditDraft::new(
            1,
            Actor {
                username: "ci".into(),
                ip: None,
            },
            "saveWebHookSettings",
            json!({
                "ownerUid": "1",
                "deliveryEndpoints": [{
                    "webhookURL": "https://bot:hunter2@example.com/hook",
                    "secretToken": "s3cret-canary",
                }, { "webhookURL": "https://example.com:8443/services/T0/B0/SLACKTOKEN?key=k", "secretToken": null }],
            }),
        );
        let data: Json = serde_json::from_str(&draft.data).unwrap();
        assert_eq!(data["mutationName"], "SaveWebHookSettings");
        assert_eq!(
            data["deliveryEndpoints"][0],
            json!({"webhookURL": "https://***:***@example.com/***", "secretToken": "[redacted]"})
        );
        assert_eq!(
            data["deliveryEndpoints"][1]["webhookURL"],
            "https://example.com:8443/***"
        );
        for secret in ["hunter2", "canary", "SLACKTOKEN", "key=k"] {
            assert!(!draft.data.contains(secret), "{secret} in {}", draft.data);
        }
    }

    fn event() -> audit_event::Model {
        audit_event::Model {
            id: 1,
            uid: "0190a4c2-0000-7000-8000-000000000001".into(),
            org_id: 1,
            kind: MUTATION.into(),
            timestamp: 1_722_518_406_287,
            data: r#"{"mutationName":"CreateBuild"}"#.into(),
            actor_id: 7,
            actor_username: "ci".into(),
            actor_ip: Some("127.0.0.1".into()),
            repository_id: None,
        }
    }

    #[test]
    fn flat_audit_bodies_are_cirrus_shaped() {
        let body = body(PayloadFormat::Flat, &event(), None).unwrap();
        assert_eq!(
            body,
            r#"{"id":"0190a4c2-0000-7000-8000-000000000001","type":"graphql.mutation","timestamp":1722518406287,"data":"{\"mutationName\":\"CreateBuild\"}","actor":{"id":7,"username":"ci"},"actorLocationIp":"127.0.0.1","action":"created","repository":{},"build":{},"task":{}}"#
        );
    }

    #[test]
    fn slack_audit_messages_escape_what_a_token_named() {
        let repo = RepositoryInfo {
            id: 3,
            owner: "acme".into(),
            name: "<!channel>".into(),
            is_private: false,
        };
        let body = body(PayloadFormat::Slack, &event(), Some(&repo)).unwrap();
        assert!(body.contains("&lt;!channel&gt;"), "{body}");
        assert!(!body.contains("<!channel>"), "{body}");
    }

    #[test]
    fn data_audit_bodies_keep_string_ids() {
        let repo = RepositoryInfo {
            id: 3,
            owner: "acme".into(),
            name: "app".into(),
            is_private: false,
        };
        let body: Json =
            serde_json::from_str(&body(PayloadFormat::Data, &event(), Some(&repo)).unwrap())
                .unwrap();
        assert_eq!(body["action"], "created");
        assert_eq!(body["data"]["actor"]["id"], "7");
        assert_eq!(body["data"]["repository"]["id"], "3");
        assert_eq!(body["data"]["actorLocationIP"], "127.0.0.1");
    }
}
