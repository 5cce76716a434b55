//! Webhook endpoints: each organization's list of URLs, secrets, filters and selections.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, Statement, TransactionTrait,
};

use super::entities::{delivery, delivery_queue, webhook_endpoint};
use crate::domain::headers::Header;
use crate::domain::{EndpointUrl, EventKind, PayloadFormat, SignatureStyle, WebHookCondition};
use crate::secrets::Vault;
use crate::{Error, Result};

/// An endpoint's settings, checked and complete.
#[derive(Clone)]
pub struct EndpointFields {
    pub url: EndpointUrl,
    pub secret: Option<String>,
    pub events: Vec<EventKind>,
    pub payload_query: Option<String>,
    pub payload_format: PayloadFormat,
    pub enabled: bool,
    pub insecure_ssl: bool,
    /// Build and task status names an event must reach to be sent; empty means every status.
    pub status_filter: Vec<String>,
    pub signature_style: SignatureStyle,
    /// Published event types sent; empty means every type (when `events` names `PUBLISHED`).
    pub published_events: Vec<String>,
    pub headers: Vec<Header>,
    /// The organization's named secret that signs, instead of `secret`.
    pub secret_name: Option<String>,
    /// The secret a rotation replaced, and until when it signs too (ms since the epoch).
    pub previous_secret: Option<(String, i64)>,
    /// The transitions a build or task event must have to be sent; empty means every event.
    pub conditions: Vec<WebHookCondition>,
}

impl EndpointFields {
    fn apply(self, row: &mut webhook_endpoint::ActiveModel, now: i64, vault: &Vault) -> Result<()> {
        let EndpointFields {
            url,
            secret,
            events,
            payload_query,
            payload_format,
            enabled,
            insecure_ssl,
            status_filter,
            signature_style,
            published_events,
            headers,
            secret_name,
            previous_secret,
            conditions,
        } = self;
        let (stored, credentials) = super::urls::to_stored(&url, vault)?;
        row.url = Set(stored);
        row.credentials = Set(credentials);
        row.secret = Set(secret.map(|secret| vault.seal(&secret)).transpose()?);
        row.events = Set(serde_json::to_string(&events).map_err(Error::internal)?);
        row.payload_query = Set(payload_query);
        row.payload_format = Set(payload_format);
        row.enabled = Set(enabled);
        row.insecure_ssl = Set(insecure_ssl);
        row.status_filter = Set(serde_json::to_string(&status_filter).map_err(Error::internal)?);
        row.signature_style = Set(signature_style);
        row.published_events =
            Set(serde_json::to_string(&published_events).map_err(Error::internal)?);
        row.headers = Set(match headers.is_empty() {
            true => None,
            false => Some(vault.seal(&serde_json::to_string(&headers).map_err(Error::internal)?)?),
        });
        row.secret_name = Set(secret_name);
        let (previous, until) = match previous_secret {
            Some((secret, until)) => (Some(vault.seal(&secret)?), Some(until)),
            None => (None, None),
        };
        row.previous_secret = Set(previous);
        row.previous_secret_until = Set(until);
        row.conditions = Set(serde_json::to_string(&conditions).map_err(Error::internal)?);
        row.updated_at = Set(now);
        Ok(())
    }
}

/// Reads a stored endpoint back into its fields, secrets opened.
pub fn fields_of(row: &webhook_endpoint::Model, vault: &Vault) -> Result<EndpointFields> {
    let url = super::urls::opened(&row.url, row.credentials.as_deref(), vault)?;
    Ok(EndpointFields {
        url,
        secret: row
            .secret
            .as_deref()
            .map(|secret| vault.open(secret))
            .transpose()?,
        events: event_kinds(row)?,
        payload_query: row.payload_query.clone(),
        payload_format: row.payload_format,
        enabled: row.enabled,
        insecure_ssl: row.insecure_ssl,
        status_filter: status_filter(row)?,
        signature_style: row.signature_style,
        published_events: published_events(row)?,
        headers: headers(row, vault)?,
        secret_name: row.secret_name.clone(),
        // A replaced secret whose overlap has ended is dropped: the next write of the endpoint
        // erases it.
        previous_secret: match (&row.previous_secret, row.previous_secret_until) {
            (Some(sealed), Some(until)) if until > crate::now_ms() => {
                Some((vault.open(sealed)?, until))
            }
            _ => None,
        },
        conditions: conditions(row)?,
    })
}

/// The transitions an endpoint asked for; empty means every event.
pub fn conditions(row: &webhook_endpoint::Model) -> Result<Vec<WebHookCondition>> {
    serde_json::from_str(&row.conditions).map_err(Error::internal)
}

/// The published event types an endpoint asked for; empty means every type.
pub fn published_events(row: &webhook_endpoint::Model) -> Result<Vec<String>> {
    serde_json::from_str(&row.published_events).map_err(Error::internal)
}

/// An endpoint's custom headers, values opened.
pub fn headers(row: &webhook_endpoint::Model, vault: &Vault) -> Result<Vec<Header>> {
    match &row.headers {
        None => Ok(Vec::new()),
        Some(sealed) => serde_json::from_str(&vault.open(sealed)?).map_err(Error::internal),
    }
}

/// The endpoint's URL as it may be shown: credentials, if any, as `***:***` (no secret is
/// opened to produce it).
pub fn masked_url(row: &webhook_endpoint::Model) -> Result<String> {
    super::urls::masked(&row.url, row.credentials.is_some())
}

/// The statuses an endpoint asked for; empty means every status.
pub fn status_filter(row: &webhook_endpoint::Model) -> Result<Vec<String>> {
    serde_json::from_str(&row.status_filter).map_err(Error::internal)
}

/// The kinds of event an endpoint subscribed to; empty means build and task events.
pub fn event_kinds(row: &webhook_endpoint::Model) -> Result<Vec<EventKind>> {
    serde_json::from_str(&row.events).map_err(Error::internal)
}

fn conflict(url: &EndpointUrl) -> impl FnOnce(sea_orm::DbErr) -> Error + '_ {
    move |err| match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => Error::Conflict(format!(
            "The organization already has an endpoint for {}.",
            url.masked()
        )),
        _ => err.into(),
    }
}

/// Adds an endpoint; its URL must be new to the organization.
pub async fn create(
    conn: &impl ConnectionTrait,
    org_id: i64,
    fields: EndpointFields,
    vault: &Vault,
) -> Result<webhook_endpoint::Model> {
    let now = crate::now_ms();
    let url = fields.url.clone();
    if let Some(name) = &fields.secret_name {
        // Under the organization's lock, as a deletion of the secret is.
        super::orgs::lock_organization(conn, org_id).await?;
        super::secrets::require(conn, org_id, name).await?;
    }
    let mut row = webhook_endpoint::ActiveModel {
        org_id: Set(org_id),
        created_at: Set(now),
        ..Default::default()
    };
    fields.apply(&mut row, now, vault)?;
    webhook_endpoint::Entity::insert(row)
        .exec_with_returning(conn)
        .await
        .map_err(conflict(&url))
}

/// Replaces an endpoint's settings.
pub async fn update(
    conn: &impl ConnectionTrait,
    current: webhook_endpoint::Model,
    fields: EndpointFields,
    vault: &Vault,
) -> Result<webhook_endpoint::Model> {
    let url = fields.url.clone();
    if let Some(name) = &fields.secret_name {
        // Under the organization's lock, as a deletion of the secret is.
        super::orgs::lock_organization(conn, current.org_id).await?;
        super::secrets::require(conn, current.org_id, name).await?;
    }
    let mut row: webhook_endpoint::ActiveModel = current.into();
    fields.apply(&mut row, crate::now_ms(), vault)?;
    row.update(conn).await.map_err(conflict(&url))
}

/// The organization's endpoint with this id.
pub async fn find(
    conn: &impl ConnectionTrait,
    org_id: i64,
    id: i64,
) -> Result<webhook_endpoint::Model> {
    webhook_endpoint::Entity::find_by_id(id)
        .filter(webhook_endpoint::Column::OrgId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("webhook endpoint", id))
}

/// The organization's endpoint with this id, locked until the transaction `tx` ends on
/// PostgreSQL (`FOR UPDATE`); on SQLite the write transaction holds the database's write lock
/// already.
pub async fn find_for_update(
    tx: &DatabaseTransaction,
    org_id: i64,
    id: i64,
) -> Result<webhook_endpoint::Model> {
    webhook_endpoint::Entity::find_by_id(id)
        .filter(webhook_endpoint::Column::OrgId.eq(org_id))
        .lock_exclusive()
        .one(tx)
        .await?
        .ok_or_else(|| Error::not_found("webhook endpoint", id))
}

/// The endpoints with these ids, of any organization (the worker's lookup for claimed
/// deliveries, which name their endpoint).
pub async fn find_many(
    conn: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<Vec<webhook_endpoint::Model>> {
    // The ids are one parameter, so the statement is prepared once per connection.
    let backend = conn.get_database_backend();
    let sql = format!(
        "SELECT * FROM webhook_endpoints WHERE {}",
        super::sql::in_ids(backend, "id")
    );
    let statement = Statement::from_sql_and_values(
        backend,
        super::sql::numbered(backend, &sql),
        [super::sql::ids(backend, ids)],
    );
    Ok(webhook_endpoint::Entity::find()
        .from_raw_sql(statement)
        .all(conn)
        .await?)
}

/// The organization's endpoints, oldest first.
pub async fn list(
    conn: &impl ConnectionTrait,
    org_id: i64,
) -> Result<Vec<webhook_endpoint::Model>> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::OrgId.eq(org_id))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(conn)
        .await?)
}

/// The enabled endpoints of these organizations, in order of creation; [`subscribes`] tells
/// which of them an event goes to.
pub async fn enabled_of(
    conn: &impl ConnectionTrait,
    org_ids: &[i64],
) -> Result<Vec<webhook_endpoint::Model>> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::OrgId.is_in(org_ids.iter().copied()))
        .filter(webhook_endpoint::Column::Enabled.eq(true))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(conn)
        .await?)
}

/// Whether the endpoint `row` subscribes to events of `kind` and, when it filters on status, to
/// `status` (the build's or task's status after the change), and, when it names conditions, to
/// `transition` (the change's): each filter narrows the others.
pub fn subscribes(
    row: &webhook_endpoint::Model,
    kind: EventKind,
    status: &str,
    transition: Option<WebHookCondition>,
) -> Result<bool> {
    let kinds = event_kinds(row)?;
    let statuses = status_filter(row)?;
    Ok(kind.is_in(&kinds)
        && (statuses.is_empty() || statuses.iter().any(|wanted| wanted == status))
        && crate::domain::transition::wanted(&conditions(row)?, transition))
}

/// Whether the endpoint `row` subscribes to audit events (only an endpoint that names them
/// does; a status filter does not apply to them).
pub fn subscribes_to_audit(row: &webhook_endpoint::Model) -> Result<bool> {
    Ok(EventKind::AuditEvent.is_in(&event_kinds(row)?))
}

/// Whether the endpoint `row` subscribes to published events of type `name`: it names
/// `PUBLISHED`, and the type is among its `publishedEvents` (when it lists any).
pub fn subscribes_to_published(row: &webhook_endpoint::Model, name: &str) -> Result<bool> {
    Ok(EventKind::Published.is_in(&event_kinds(row)?)
        && crate::domain::published::wants(&published_events(row)?, name))
}

/// Deletes an endpoint with its deliveries, their queue rows and their attempts.
pub async fn delete(conn: &impl ConnectionTrait, endpoint: &webhook_endpoint::Model) -> Result<()> {
    delivery_queue::Entity::delete_many()
        .filter(delivery_queue::Column::EndpointId.eq(endpoint.id))
        .exec(conn)
        .await?;
    #[derive(FromQueryResult)]
    struct Delivery {
        id: i64,
    }
    let deliveries: Vec<i64> = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::Id)
        .filter(delivery::Column::EndpointId.eq(endpoint.id))
        .into_model::<Delivery>()
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect();
    super::deliveries::delete(conn, &deliveries).await?;
    webhook_endpoint::Entity::delete_by_id(endpoint.id)
        .exec(conn)
        .await?;
    Ok(())
}

/// Turns an endpoint off (a receiver answered 410 Gone).
pub async fn disable(conn: &impl ConnectionTrait, id: i64) -> Result<()> {
    webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::Enabled, false.into())
        .col_expr(webhook_endpoint::Column::UpdatedAt, crate::now_ms().into())
        .filter(webhook_endpoint::Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// The settings key of the value that tells whether the configured key is the sealing key.
const CHECK_KEY: &str = "encryption_check";
const CHECK_VALUE: &str = "herald";

/// Makes the stored secrets agree with the configured key, at start: with a key, checks it is
/// the key they were sealed with (or seals every secret stored in clear, the first time, the
/// token key among them); without one, refuses a database whose secrets are sealed.
///
/// The first time is one transaction, and reads each secret with the key, clear or sealed
/// already: a start stopped halfway, or two processes starting with the key at once, leave the
/// secrets as they were or all sealed, and the next start finishes the work.
pub async fn reconcile_sealing(db: &DatabaseConnection, vault: &Vault) -> anyhow::Result<()> {
    use super::entities::setting;
    let check = setting::Entity::find_by_id(CHECK_KEY).one(db).await?;
    match (check, vault.is_sealing()) {
        (Some(check), true) => {
            if vault.open(&check.value).ok().as_deref() != Some(CHECK_VALUE) {
                anyhow::bail!(
                    "HERALD_ENCRYPTION_KEY is not the key the stored secrets were encrypted with"
                );
            }
            // A token key stored in clear beside secrets sealed already (it was not sealed
            // before) is sealed now.
            let tx = db.begin().await?;
            erase_replaced(&tx).await?;
            let sealed = super::orgs::seal_jwt_key(&tx, vault).await?;
            tx.commit().await?;
            if sealed {
                checkpoint(db).await;
            }
        }
        (Some(_), false) => {
            anyhow::bail!(
                "the stored secrets are encrypted; set HERALD_ENCRYPTION_KEY to the key they were encrypted with"
            )
        }
        (None, true) => {
            let tx = db.begin().await?;
            erase_replaced(&tx).await?;
            for row in webhook_endpoint::Entity::find().all(&tx).await? {
                let fields = fields_of(&row, vault).map_err(|err| anyhow::anyhow!("{err}"))?;
                update(&tx, row, fields, vault)
                    .await
                    .map_err(|err| anyhow::anyhow!("{err}"))?;
            }
            super::secrets::seal_all(&tx, vault)
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            super::approvals::seal_all(&tx, vault)
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            super::orgs::seal_jwt_key(&tx, vault).await?;
            let row = setting::ActiveModel {
                key: Set(CHECK_KEY.into()),
                value: Set(vault.seal(CHECK_VALUE)?),
            };
            setting::Entity::insert(row)
                .on_conflict_do_nothing()
                .exec_without_returning(&tx)
                .await?;
            tx.commit().await?;
            checkpoint(db).await;
        }
        (None, false) => {}
    }
    Ok(())
}

/// On SQLite, makes the connection of `tx` overwrite what its writes replace
/// (`secure_delete`): a secret sealed in place leaves no clear copy in its page's free space.
async fn erase_replaced(tx: &DatabaseTransaction) -> anyhow::Result<()> {
    if tx.get_database_backend() == DbBackend::Sqlite {
        tx.execute_unprepared("PRAGMA secure_delete = ON").await?;
    }
    Ok(())
}

/// On SQLite, copies the write-ahead log into the database file and empties it, so that no
/// earlier image of a page holding a clear secret stays in the log's file. Best effort: a
/// reader holding the log back leaves it to SQLite's next checkpoint, which overwrites it.
async fn checkpoint(db: &DatabaseConnection) {
    if db.get_database_backend() == DbBackend::Sqlite
        && let Err(err) = db
            .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
    {
        tracing::warn!(error = %err, "emptying the write-ahead log after sealing failed");
    }
}
