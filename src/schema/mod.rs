//! The read side of the GraphQL API: the `Query` root, the object types, token auth and
//! guards, and the row budgets. Names follow Cirrus CI's public schema.
//!
//! Resolvers read the request's [`Viewer`] (from the token) and [`Db`] (the pool, or the open
//! transaction when a payload is being rendered) from the context. Nothing here writes: the
//! payload renderer runs stored selections on [`QuerySchema`], which has no mutations, and the
//! API's mutations (`crate::api`) build on the same `Query`. This module never imports axum:
//! the HTTP layer and the payload renderer both call [`execute`].

pub mod approvals;
pub mod auth;
pub mod ci;
pub mod deliveries;
pub mod inputs;
pub mod rows;
pub mod selections;
pub mod types;
pub mod webhooks;

use async_graphql::{
    EmptyMutation, EmptySubscription, MergedObject, ObjectType, Schema, ServerError,
    SubscriptionType,
};

pub use auth::{Claims, TokenKeys, Viewer};

/// Where Herald's console is published (`HERALD_PUBLIC_URL`, without a trailing `/`), from which
/// `Build.webUrl` and `Task.webUrl` link; none leaves them null.
#[derive(Clone, Debug, Default)]
pub struct PublicUrl(pub Option<std::sync::Arc<str>>);

impl PublicUrl {
    pub fn new(url: Option<&str>) -> Self {
        Self(url.map(|url| std::sync::Arc::from(url.trim_end_matches('/'))))
    }

    /// The link to `path` (`build/7`), when a public URL is set.
    pub fn link(&self, path: &str) -> Option<String> {
        self.0.as_ref().map(|base| format!("{base}/{path}"))
    }
}

/// A time in ms since the epoch as RFC 3339 in UTC, to the second: `2021-07-26T18:10:37+00:00`,
/// as receivers that take ISO 8601 timestamps (Foundries.io's) expect.
pub fn iso_8601(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}
pub use types::{Build, OwnerInfo, Repository, Task, UserInfo};

use crate::Error;
use crate::store::Db;

/// The read side alone: what stored payload selections run on, so they cannot mutate.
pub type QuerySchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Every query, by area.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    ci::CiQuery,
    webhooks::WebhookQuery,
    deliveries::DeliveryQuery,
);

/// Bounds checked before any resolver runs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub depth: usize,
    pub complexity: usize,
    pub introspection: bool,
    /// The most rows one request may read (see [`rows::Budget`]).
    pub rows: usize,
}

impl Limits {
    /// For requests from clients (GraphiQL's own introspection query fits, and so do the
    /// console's: 20 repositories with their last 5 builds and those builds' tasks).
    pub const API: Limits = Limits {
        depth: 20,
        complexity: 100_000,
        introspection: true,
        rows: 50_000,
    };
    /// For stored payload selections, at most 15 levels deep, which run inside the writer that
    /// records every organization's changes: a build's whole task list with a few fields each
    /// fits, a list of lists does not.
    pub const PAYLOAD: Limits = Limits {
        depth: 15,
        complexity: 2_000,
        introspection: false,
        rows: 2_000,
    };
}

/// What a list costs in a query's complexity: its selection's cost for each item it may
/// return, so that nested lists multiply.
pub(crate) fn list_cost(items: usize, child_complexity: usize) -> usize {
    items.saturating_mul(child_complexity).saturating_add(1)
}

/// [`list_cost`] of a page: as many items as `first` asks for, or the default page.
pub(crate) fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    use crate::store::Page;
    let items = first.unwrap_or(Page::DEFAULT).clamp(0, Page::MAX) as usize;
    list_cost(items, child_complexity)
}

/// How many tasks a query's complexity counts on for a build's task list, which has no pages:
/// the most a build may have, so that the cost is true for every build a token can record.
pub(crate) const TASKS_PER_BUILD: usize = crate::domain::limits::MAX_TASKS_PER_BUILD;

/// The query-only schema with the given limits.
pub fn query_schema(limits: Limits) -> QuerySchema {
    limits
        .apply(Schema::build(
            QueryRoot::default(),
            EmptyMutation,
            EmptySubscription,
        ))
        .finish()
}

impl Limits {
    /// Sets these limits on a schema being built.
    pub fn apply<Q, M, S>(
        self,
        builder: async_graphql::SchemaBuilder<Q, M, S>,
    ) -> async_graphql::SchemaBuilder<Q, M, S> {
        let builder = builder
            .limit_depth(self.depth)
            .limit_complexity(self.complexity);
        if self.introspection {
            builder
        } else {
            builder.disable_introspection()
        }
    }
}

/// The most aliases one request may use (each can repeat an expensive field).
pub const MAX_ALIASES: usize = 30;
/// The most directives one request may use.
pub const MAX_DIRECTIVES: usize = 20;

/// Runs a request and gives every error its `extensions.code`.
pub async fn execute<Q, M, S>(
    schema: &Schema<Q, M, S>,
    mut request: async_graphql::Request,
) -> async_graphql::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    // Alias and directive counts are checked on the parsed document before anything runs;
    // depth and complexity are checked by the engine, also before any resolver.
    let nul_variable = inputs::nul_in_variables(&request.variables);
    if let Ok(doc) = request.parsed_query() {
        let (aliases, directives) = count_aliases_and_directives(doc);
        let refusal = if let Some(path) = nul_variable.or_else(|| inputs::nul_in_document(doc)) {
            Some(format!(
                "The input {path} holds a NUL character, which Herald cannot store."
            ))
        } else if aliases > MAX_ALIASES {
            Some(format!(
                "The request uses {aliases} aliases; at most {MAX_ALIASES} are allowed."
            ))
        } else if directives > MAX_DIRECTIVES {
            Some(format!(
                "The request uses {directives} directives; at most {MAX_DIRECTIVES} are allowed."
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            let mut error = ServerError::new(message, None);
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
            return async_graphql::Response::from_errors(vec![error]);
        }
    }
    let mut response = schema.execute(request).await;
    for error in &mut response.errors {
        classify(error);
    }
    response
}

/// Counts the aliases and directives of every operation and fragment of a document.
fn count_aliases_and_directives(
    doc: &async_graphql::parser::types::ExecutableDocument,
) -> (usize, usize) {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn walk(set: &SelectionSet, counts: &mut (usize, usize)) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    counts.0 += usize::from(field.node.alias.is_some());
                    counts.1 += field.node.directives.len();
                    walk(&field.node.selection_set.node, counts);
                }
                Selection::InlineFragment(fragment) => {
                    counts.1 += fragment.node.directives.len();
                    walk(&fragment.node.selection_set.node, counts);
                }
                Selection::FragmentSpread(spread) => counts.1 += spread.node.directives.len(),
            }
        }
    }
    let mut counts = (0, 0);
    for (_, operation) in doc.operations.iter() {
        counts.1 += operation.node.directives.len();
        walk(&operation.node.selection_set.node, &mut counts);
    }
    for fragment in doc.fragments.values() {
        walk(&fragment.node.selection_set.node, &mut counts);
    }
    counts
}

/// Errors from Herald carry their own code; anything else the engine refused before running a
/// resolver (syntax, validation, limits, input coercion) is the client's input.
fn classify(error: &mut ServerError) {
    let code = error
        .source::<Error>()
        .map(Error::code)
        .unwrap_or("BAD_USER_INPUT");
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

/// The database handle of this request.
pub(crate) fn db<'a>(ctx: &'a async_graphql::Context<'_>) -> crate::Result<&'a Db> {
    ctx.data::<Db>()
        .map_err(|_| Error::internal("the request has no database handle"))
}
