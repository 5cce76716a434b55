//! The CI records as GraphQL objects: OwnerInfo, Repository, Build, Task, and the audit
//! events listed by `OwnerInfo.auditEvents`.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object, OutputType, SimpleObject};

use super::auth::require;
use super::{db, deliveries::WebHookDelivery, rows, webhooks::WebHookSettings};
use crate::Result;
use crate::domain::{
    BuildStatus, DeliveryState, Notification, Permission, TaskStatus, WebHookCondition,
    seconds_between,
};
use crate::store::entities::{audit_event, build, organization, repository, task};
use crate::store::{self, Page, parse_id};

/// Turns a fetched page (one row more than asked for) into a Relay connection.
pub(crate) fn connection<R, N: OutputType>(
    mut rows: Vec<R>,
    page: Page,
    id: impl Fn(&R) -> i64,
    node: impl Fn(R) -> N,
) -> Connection<String, N> {
    let has_next = rows.len() as u64 > page.limit;
    rows.truncate(page.limit as usize);
    let mut connection = Connection::new(page.after.is_some(), has_next);
    connection.edges.extend(
        rows.into_iter()
            .map(|row| Edge::new(id(&row).to_string(), node(row))),
    );
    connection
}

/// An organization: its repositories and its webhook settings.
pub struct OwnerInfo(pub organization::Model);

#[Object]
impl OwnerInfo {
    async fn uid(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    /// The permission of the token asking.
    async fn viewer_permission(&self, ctx: &Context<'_>) -> Result<Permission> {
        Ok(require(ctx, Permission::Read)?.permission)
    }

    /// The webhook endpoints (ADMIN).
    async fn webhook_settings(&self, ctx: &Context<'_>) -> Result<WebHookSettings> {
        require(ctx, Permission::Admin)?;
        WebHookSettings::load(db(ctx)?, &self.0).await
    }

    /// Deliveries, newest first, optionally of one endpoint and one state (ADMIN).
    #[graphql(complexity = "crate::schema::page_cost(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        endpoint_id: Option<ID>,
        state: Option<DeliveryState>,
    ) -> Result<Connection<String, WebHookDelivery>> {
        require(ctx, Permission::Admin)?;
        let page = Page::new(first, after)?;
        let endpoint_id = endpoint_id
            .map(|id| parse_id("webhook endpoint", &id))
            .transpose()?;
        let rows =
            store::deliveries::list(&db(ctx)?.conn(), self.0.id, endpoint_id, state, page).await?;
        rows::charge(ctx, rows.len())?;
        Ok(connection(rows, page, |row| row.id, WebHookDelivery))
    }

    /// Approval hooks, oldest first (ADMIN).
    async fn approval_hooks(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::approvals::ApprovalHook>> {
        require(ctx, Permission::Admin)?;
        let rows = store::approvals::list(&db(ctx)?.conn(), self.0.id).await?;
        Ok(rows
            .into_iter()
            .map(super::approvals::ApprovalHook)
            .collect())
    }

    /// The approval log: every call of the organization's approval hooks (or of one), newest
    /// first (ADMIN).
    #[graphql(complexity = "crate::schema::page_cost(first, child_complexity)")]
    async fn approval_calls(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        hook_id: Option<ID>,
    ) -> Result<Connection<String, super::approvals::ApprovalCall>> {
        require(ctx, Permission::Admin)?;
        let page = Page::new(first, after)?;
        let hook_id = hook_id
            .map(|id| parse_id("approval hook", &id))
            .transpose()?;
        let rows = store::approvals::calls(&db(ctx)?.conn(), self.0.id, hook_id, page).await?;
        rows::charge(ctx, rows.len())?;
        Ok(connection(
            rows,
            page,
            |row| row.id,
            super::approvals::ApprovalCall,
        ))
    }

    /// Named secrets, by name (ADMIN): values are write-only, shown masked.
    async fn webhook_secrets(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::webhooks::WebHookSecret>> {
        require(ctx, Permission::Admin)?;
        let rows = store::secrets::list(&db(ctx)?.conn(), self.0.id).await?;
        rows::charge(ctx, rows.len())?;
        Ok(rows
            .into_iter()
            .map(super::webhooks::WebHookSecret)
            .collect())
    }

    /// Audit events: every mutation performed for the organization, newest first (ADMIN).
    #[graphql(complexity = "crate::schema::page_cost(first, child_complexity)")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, AuditEventType>> {
        require(ctx, Permission::Admin)?;
        let page = Page::new(first, after)?;
        let rows = store::audit::list(&db(ctx)?.conn(), self.0.id, page).await?;
        rows::charge(ctx, rows.len())?;
        Ok(connection(rows, page, |row| row.id, AuditEventType))
    }

    /// Repositories, oldest first.
    #[graphql(complexity = "crate::schema::page_cost(first, child_complexity)")]
    async fn repositories(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Repository>> {
        require(ctx, Permission::Read)?;
        let page = Page::new(first, after)?;
        let rows = store::ci::repositories(&db(ctx)?.conn(), self.0.id, page).await?;
        rows::charge(ctx, rows.len())?;
        Ok(connection(rows, page, |row| row.id, Repository))
    }
}

/// A repository whose builds Herald records.
pub struct Repository(pub repository::Model);

#[Object]
impl Repository {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The owning organization's name.
    async fn owner(&self, ctx: &Context<'_>) -> Result<String> {
        let org = rows::organization(ctx, self.0.org_id).await?;
        Ok(org.map(|org| org.name).unwrap_or_default())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn is_private(&self) -> bool {
        self.0.is_private
    }

    async fn default_branch(&self) -> &str {
        &self.0.default_branch
    }

    /// Builds, newest first, optionally of one status.
    #[graphql(complexity = "crate::schema::page_cost(first, child_complexity)")]
    async fn builds(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<BuildStatus>,
    ) -> Result<Connection<String, Build>> {
        let page = Page::new(first, after)?;
        let rows =
            store::ci::builds(&db(ctx)?.conn(), self.0.org_id, self.0.id, status, page).await?;
        rows::charge(ctx, rows.len())?;
        Ok(connection(rows, page, |row| row.id, Build))
    }
}

/// The console's page of a build or task, when Herald has a public URL.
fn web_url(ctx: &Context<'_>, kind: &str, id: i64) -> Option<String> {
    ctx.data_opt::<super::PublicUrl>()?
        .link(&format!("{kind}/{id}"))
}

/// One build of a repository: a change, and the tasks that check it.
pub struct Build(pub build::Model);

#[Object]
impl Build {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn repository_id(&self) -> ID {
        ID(self.0.repository_id.to_string())
    }

    async fn repository(&self, ctx: &Context<'_>) -> Result<Repository> {
        Ok(Repository(
            rows::repository(ctx, self.0.org_id, self.0.repository_id).await?,
        ))
    }

    async fn branch(&self) -> &str {
        &self.0.branch
    }

    async fn tag(&self) -> Option<&str> {
        self.0.tag.as_deref()
    }

    async fn change_id_in_repo(&self) -> &str {
        &self.0.change_id_in_repo
    }

    async fn change_message_title(&self) -> &str {
        &self.0.change_message_title
    }

    async fn change_message(&self) -> &str {
        &self.0.change_message
    }

    async fn pull_request(&self) -> Option<i64> {
        self.0.pull_request
    }

    async fn pull_request_draft(&self) -> Option<bool> {
        self.0.pull_request_draft
    }

    /// When the change was made (ms since the epoch).
    async fn change_timestamp(&self) -> i64 {
        self.0.change_timestamp
    }

    /// When Herald recorded the build (ms since the epoch).
    async fn build_created_timestamp(&self) -> i64 {
        self.0.created_at
    }

    /// `buildCreatedTimestamp` as ISO 8601 (`2021-07-26T18:10:33+00:00`).
    async fn build_created_timestamp_iso(&self) -> String {
        super::iso_8601(self.0.created_at)
    }

    /// `changeTimestamp` as ISO 8601.
    async fn change_timestamp_iso(&self) -> String {
        super::iso_8601(self.0.change_timestamp)
    }

    /// When the build reached a final status (ms since the epoch); null until then.
    async fn final_status_timestamp(&self) -> Option<i64> {
        self.0.final_status_timestamp
    }

    /// `finalStatusTimestamp` as ISO 8601; null until the build ends.
    async fn final_status_timestamp_iso(&self) -> Option<String> {
        self.0.final_status_timestamp.map(super::iso_8601)
    }

    /// The work id an approval hook's answer gave, repeated as `X-Herald-Work-Id` on every
    /// delivery of the build; null without one.
    async fn work_id(&self) -> Option<&str> {
        self.0.work_id.as_deref()
    }

    /// The build's page in Herald's console, `<HERALD_PUBLIC_URL>/build/<id>`; null without a
    /// public URL.
    async fn web_url(&self, ctx: &Context<'_>) -> Option<String> {
        web_url(ctx, "build", self.0.id)
    }

    /// How the build's final status compares with the build of its repository and branch that
    /// finished before it (`previousBuild`): `BROKEN`, `FIXED`, `STILL_FAILING` or
    /// `FIRST_FAILURE_ON_BRANCH`; null while it has not finished, when it passed after a pass
    /// (or first), and when it was aborted. Endpoints' `conditions` choose events by it.
    async fn transition(&self) -> Option<WebHookCondition> {
        self.0.transition
    }

    /// The build of the same repository and branch that finished (`COMPLETED`, `FAILED` or
    /// `ERRORED`) last before this one did, in the order their changes were recorded; null
    /// until this build finishes, and when none did before it.
    async fn previous_build(&self, ctx: &Context<'_>) -> Result<Option<Build>> {
        let Some(id) = self.0.previous_build_id else {
            return Ok(None);
        };
        match rows::build(ctx, self.0.org_id, id).await {
            Ok(row) => Ok(Some(Build(row))),
            Err(crate::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// From the start of execution (or creation) to the final status, or to now while the build
    /// executes; 0 before it starts. Cirrus CI sends the running time of an executing build.
    async fn duration_in_seconds(&self) -> i64 {
        match (self.0.executing_timestamp, self.0.final_status_timestamp) {
            (Some(start), Some(end)) => seconds_between(start, end),
            (None, Some(end)) => seconds_between(self.0.created_at, end),
            (Some(start), None) => seconds_between(start, crate::now_ms()),
            (None, None) => 0,
        }
    }

    async fn status(&self) -> BuildStatus {
        self.0.status
    }

    /// Who initiated the build: the name the CI engine gave (`createBuild`'s `initializer`), or
    /// the subject of the token that recorded it. Null for builds recorded before Herald kept it.
    async fn initializer(&self) -> Option<UserInfo> {
        UserInfo::of_build(&self.0)
    }

    /// The same as `initializer`, under the name Cirrus CI's payloads use.
    async fn user(&self) -> Option<UserInfo> {
        UserInfo::of_build(&self.0)
    }

    #[graphql(
        complexity = "crate::schema::list_cost(crate::schema::TASKS_PER_BUILD, child_complexity)"
    )]
    async fn tasks(&self, ctx: &Context<'_>) -> Result<Vec<Task>> {
        let rows = rows::tasks_of_build(ctx, self.0.org_id, self.0.id).await?;
        Ok(rows.iter().cloned().map(Task).collect())
    }
}

/// A user of an organization: a name its tokens or its CI engine act as, with a numeric id.
#[derive(SimpleObject, Clone, Debug)]
pub struct UserInfo {
    pub id: ID,
    pub username: String,
}

impl UserInfo {
    fn of_build(build: &build::Model) -> Option<Self> {
        let (id, username) = (build.initializer_id?, build.initializer.clone()?);
        Some(Self {
            id: ID(id.to_string()),
            username,
        })
    }
}

/// One task of a build.
pub struct Task(pub task::Model);

#[Object]
impl Task {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn build_id(&self) -> ID {
        ID(self.0.build_id.to_string())
    }

    async fn repository_id(&self) -> ID {
        ID(self.0.repository_id.to_string())
    }

    async fn build(&self, ctx: &Context<'_>) -> Result<Build> {
        Ok(Build(
            rows::build(ctx, self.0.org_id, self.0.build_id).await?,
        ))
    }

    async fn repository(&self, ctx: &Context<'_>) -> Result<Repository> {
        Ok(Repository(
            rows::repository(ctx, self.0.org_id, self.0.repository_id).await?,
        ))
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn name_alias(&self) -> Option<&str> {
        self.0.name_alias.as_deref()
    }

    async fn local_group_id(&self) -> i64 {
        self.0.local_group_id
    }

    /// How the task's final status compares with the task of the same name that finished last
    /// before it on its build's branch, as `Build.transition` does for builds; null
    /// otherwise.
    async fn transition(&self) -> Option<WebHookCondition> {
        self.0.transition
    }

    async fn status(&self) -> TaskStatus {
        self.0.status
    }

    /// When the task last changed status (ms since the epoch).
    async fn status_timestamp(&self) -> i64 {
        self.0.status_timestamp
    }

    async fn creation_timestamp(&self) -> i64 {
        self.0.creation_timestamp
    }

    /// `creationTimestamp` as ISO 8601 (`2021-07-26T18:10:37+00:00`).
    async fn creation_timestamp_iso(&self) -> String {
        super::iso_8601(self.0.creation_timestamp)
    }

    /// `statusTimestamp` as ISO 8601.
    async fn status_timestamp_iso(&self) -> String {
        super::iso_8601(self.0.status_timestamp)
    }

    /// When the task reached a final status; null until then.
    async fn final_status_timestamp(&self) -> Option<i64> {
        self.0.final_status_timestamp
    }

    /// `finalStatusTimestamp` as ISO 8601; null until the task ends.
    async fn final_status_timestamp_iso(&self) -> Option<String> {
        self.0.final_status_timestamp.map(super::iso_8601)
    }

    /// The work id an approval hook's answer gave, repeated as `X-Herald-Work-Id` on every
    /// delivery of the task; its build's when it has none of its own.
    async fn work_id(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        if let Some(own) = &self.0.work_id {
            return Ok(Some(own.clone()));
        }
        Ok(rows::build(ctx, self.0.org_id, self.0.build_id)
            .await?
            .work_id)
    }

    /// The task's page in Herald's console, `<HERALD_PUBLIC_URL>/task/<id>`; null without a
    /// public URL.
    async fn web_url(&self, ctx: &Context<'_>) -> Option<String> {
        web_url(ctx, "task", self.0.id)
    }

    /// From the start of execution to the final status, or to now while it runs; 0 before.
    async fn duration_in_seconds(&self) -> i64 {
        match (self.0.executing_timestamp, self.0.final_status_timestamp) {
            (Some(start), Some(end)) => seconds_between(start, end),
            (None, Some(end)) => seconds_between(self.0.creation_timestamp, end),
            (Some(start), None) => seconds_between(start, crate::now_ms()),
            (None, None) => 0,
        }
    }

    async fn labels(&self) -> Result<Vec<String>> {
        store::ci::labels_or_notes(&self.0.labels)
    }

    /// The labels that tell this task apart from other tasks of its build with the same name
    /// (a matrix); all its labels when its name is unique.
    #[graphql(complexity = "crate::schema::TASKS_PER_BUILD")]
    async fn unique_labels(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        let own: Vec<String> = store::ci::labels_or_notes(&self.0.labels)?;
        let siblings = rows::tasks_of_build(ctx, self.0.org_id, self.0.build_id).await?;
        let mut others = Vec::new();
        for sibling in siblings
            .iter()
            .filter(|t| t.name == self.0.name && t.id != self.0.id)
        {
            others.push(store::ci::labels_or_notes::<String>(&sibling.labels)?);
        }
        if others.is_empty() {
            return Ok(own);
        }
        Ok(own
            .into_iter()
            .filter(|label| !others.iter().all(|labels| labels.contains(label)))
            .collect())
    }

    async fn automatic_re_run(&self) -> bool {
        self.0.automatic_re_run
    }

    async fn automatically_re_runnable(&self) -> bool {
        self.0.automatically_re_runnable
    }

    async fn manual_rerun_count(&self) -> i64 {
        self.0.manual_rerun_count
    }

    async fn instance_type(&self) -> &str {
        &self.0.instance_type
    }

    async fn notifications(&self) -> Result<Vec<Notification>> {
        store::ci::labels_or_notes(&self.0.notifications)
    }
}

/// Something done for an organization: for now, always a GraphQL mutation.
pub struct AuditEventType(pub audit_event::Model);

#[Object(name = "AuditEventType")]
impl AuditEventType {
    /// The event's id, a UUID.
    async fn id(&self) -> ID {
        ID(self.0.uid.clone())
    }

    /// `graphql.mutation`: a mutation was performed for the organization.
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    /// When it happened (ms since the epoch).
    async fn timestamp(&self) -> i64 {
        self.0.timestamp
    }

    /// A JSON object as a string: `mutationName` and the mutation's input, secrets removed.
    async fn data(&self) -> &str {
        &self.0.data
    }

    /// Who performed it: the subject of the token.
    async fn actor(&self) -> UserInfo {
        UserInfo {
            id: ID(self.0.actor_id.to_string()),
            username: self.0.actor_username.clone(),
        }
    }

    /// The address the request came from.
    #[graphql(name = "actorLocationIP")]
    async fn actor_location_ip(&self) -> Option<&str> {
        self.0.actor_ip.as_deref()
    }

    /// The repository the mutation concerned, if any (and if it still exists).
    async fn repository(&self, ctx: &Context<'_>) -> Result<Option<Repository>> {
        let Some(id) = self.0.repository_id else {
            return Ok(None);
        };
        match rows::repository(ctx, self.0.org_id, id).await {
            Ok(row) => Ok(Some(Repository(row))),
            Err(crate::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}
