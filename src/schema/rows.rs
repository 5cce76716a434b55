//! The CI rows resolvers read, and the ones a payload already has.
//!
//! A payload is rendered inside the transaction of its change, which has just written the build
//! or task the event is about: [`Known`] hands those rows, and the build's tasks, which the
//! batch of changes read for all its payloads at once, to the resolvers instead of reading them
//! back. It also keeps the repositories and organizations the process has read, which are never
//! updated or deleted once created (a change that makes them so must drop [`Settled`]). The
//! default selection of a task event then reads nothing of its own, where it read five rows.
//! The API's own requests carry no [`Known`] and read everything from the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::Context;

use super::db;
use crate::store;
use crate::store::entities::{build, organization, repository, task};
use crate::{Error, Result};

/// How many repositories, and how many organizations, [`Settled`] keeps before it starts over.
const SETTLED_CAPACITY: usize = 4096;

/// How many rows one request may read. The cost of a query, checked before it runs, counts on
/// the most each list may return; this counts what its resolvers really read, so that a
/// request that passes its bound ends with one sentence instead of reading on.
#[derive(Debug)]
pub struct Budget {
    read: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            read: AtomicUsize::new(0),
            limit,
        }
    }

    /// Whether the request read more than its bound.
    pub fn exceeded(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.limit
    }

    /// The sentence a request that passed the bound ends with.
    pub fn refusal(&self) -> String {
        format!(
            "The request reads more than {} rows; ask for fewer (smaller pages, fewer nested lists).",
            self.limit
        )
    }
}

/// Counts `rows` read against the request's [`Budget`], if it has one.
pub fn charge(ctx: &Context<'_>, rows: usize) -> Result<()> {
    let Some(budget) = ctx.data_opt::<Arc<Budget>>() else {
        return Ok(());
    };
    let read = budget.read.fetch_add(rows, Ordering::Relaxed) + rows;
    if read > budget.limit {
        return Err(Error::Invalid(budget.refusal()));
    }
    Ok(())
}

/// Repositories and organizations read before: rows that never change once created.
#[derive(Default)]
pub struct Settled {
    repositories: Mutex<HashMap<i64, repository::Model>>,
    organizations: Mutex<HashMap<i64, organization::Model>>,
}

/// The rows a payload's change wrote in its transaction, and the process's [`Settled`] rows.
pub struct Known {
    pub build: Option<build::Model>,
    pub task: Option<task::Model>,
    /// The tasks of the change's build, in creation order.
    pub build_tasks: Option<Arc<Vec<task::Model>>>,
    pub settled: Arc<Settled>,
}

fn known<'a>(ctx: &'a Context<'_>) -> Option<&'a Known> {
    ctx.data_opt::<Known>()
}

fn remembered<T: Clone>(map: &Mutex<HashMap<i64, T>>, id: i64) -> Option<T> {
    map.lock().ok()?.get(&id).cloned()
}

fn remember<T>(map: &Mutex<HashMap<i64, T>>, id: i64, row: T) {
    if let Ok(mut map) = map.lock() {
        if map.len() >= SETTLED_CAPACITY {
            map.clear();
        }
        map.insert(id, row);
    }
}

/// The organization's repository with this id.
pub async fn repository(ctx: &Context<'_>, org_id: i64, id: i64) -> Result<repository::Model> {
    charge(ctx, 1)?;
    let Some(known) = known(ctx) else {
        return store::ci::repository(&db(ctx)?.conn(), org_id, id).await;
    };
    let settled = &known.settled.repositories;
    match remembered(settled, id) {
        Some(row) if row.org_id == org_id => Ok(row),
        _ => {
            let row = store::ci::repository(&db(ctx)?.conn(), org_id, id).await?;
            remember(settled, id, row.clone());
            Ok(row)
        }
    }
}

/// The organization with this id.
pub async fn organization(ctx: &Context<'_>, id: i64) -> Result<Option<organization::Model>> {
    charge(ctx, 1)?;
    let Some(known) = known(ctx) else {
        return store::orgs::find(&db(ctx)?.conn(), id).await;
    };
    let settled = &known.settled.organizations;
    if let Some(row) = remembered(settled, id) {
        return Ok(Some(row));
    }
    let row = store::orgs::find(&db(ctx)?.conn(), id).await?;
    if let Some(row) = &row {
        remember(settled, id, row.clone());
    }
    Ok(row)
}

/// The organization's build with this id.
pub async fn build(ctx: &Context<'_>, org_id: i64, id: i64) -> Result<build::Model> {
    charge(ctx, 1)?;
    match known(ctx).and_then(|known| known.build.as_ref()) {
        Some(row) if row.id == id && row.org_id == org_id => Ok(row.clone()),
        _ => store::ci::build(&db(ctx)?.conn(), org_id, id).await,
    }
}

/// The organization's task with this id.
pub async fn task(ctx: &Context<'_>, org_id: i64, id: i64) -> Result<task::Model> {
    charge(ctx, 1)?;
    match known(ctx).and_then(|known| known.task.as_ref()) {
        Some(row) if row.id == id && row.org_id == org_id => Ok(row.clone()),
        _ => store::ci::task(&db(ctx)?.conn(), org_id, id).await,
    }
}

/// The tasks of the organization's build with this id, in creation order.
pub async fn tasks_of_build(
    ctx: &Context<'_>,
    org_id: i64,
    build_id: i64,
) -> Result<Arc<Vec<task::Model>>> {
    let tasks = match known(ctx) {
        Some(Known {
            build: Some(build),
            build_tasks: Some(tasks),
            ..
        }) if build.id == build_id && build.org_id == org_id => tasks.clone(),
        _ => Arc::new(store::ci::tasks_of_build(&db(ctx)?.conn(), org_id, build_id).await?),
    };
    charge(ctx, tasks.len())?;
    Ok(tasks)
}
