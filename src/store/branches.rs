//! Each branch's last finished build, and last finished task of each name: the stored history
//! that decides a finishing build's or task's transition (see [`crate::domain::transition`]).
//!
//! A batch of changes reads the states of the branches its changes finish builds or tasks on,
//! at its start, locked until it commits on PostgreSQL: a batch of another process finishing a
//! build of the same branch waits for it, and then compares with what it recorded. The batch
//! decides its own changes in their order, so of two builds of a branch finishing in one batch
//! the second compares with the first, and writes the states back once, before its commit.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};

use super::sql;
use crate::domain::WebHookCondition;
use crate::domain::transition::{self, Verdict};
use crate::{Error, Result};

/// A branch of a repository, for its builds (`task_name` empty) or for its tasks of one name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[cfg_attr(test, derive(Default))]
pub struct BranchKey {
    pub repository_id: i64,
    pub branch: String,
    pub task_name: String,
}

impl sql::Row for BranchKey {}

/// How a finished build or task compares with its branch's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// The build or task whose finish it was compared with.
    pub previous_id: Option<i64>,
    pub transition: Option<WebHookCondition>,
}

/// The states a batch read, and what its changes made of them: each branch's last finish with
/// a verdict, as the build's (or task's) id and status.
#[derive(Default)]
pub struct Branches {
    states: BTreeMap<BranchKey, Option<(i64, String)>>,
    changed: BTreeSet<BranchKey>,
}

impl Branches {
    /// Reads the states of these branches, locking them (on PostgreSQL) until the transaction
    /// ends, in one statement and one order so that two batches never deadlock (see
    /// [`read_sql`]).
    pub async fn read(conn: &impl ConnectionTrait, keys: BTreeSet<BranchKey>) -> Result<Self> {
        if keys.is_empty() {
            return Ok(Self::default());
        }
        let backend = conn.get_database_backend();
        #[derive(FromQueryResult)]
        struct Stored {
            repository_id: i64,
            branch: String,
            task_name: String,
            last_id: Option<i64>,
            last_status: Option<String>,
        }
        let statement =
            Statement::from_sql_and_values(backend, read_sql(backend), [sql::rows(keys.iter())]);
        let mut states: BTreeMap<BranchKey, Option<(i64, String)>> =
            keys.into_iter().map(|key| (key, None)).collect();
        for row in Stored::find_by_statement(statement).all(conn).await? {
            let key = BranchKey {
                repository_id: row.repository_id,
                branch: row.branch,
                task_name: row.task_name,
            };
            states.insert(key, row.last_id.zip(row.last_status));
        }
        Ok(Self {
            states,
            changed: BTreeSet::new(),
        })
    }

    /// Records that build or task `id` of `key`'s branch reached `status`, whose verdict is
    /// `verdict`, and decides its transition against the branch's last finish, whichever build
    /// (or task) it was: a re-run that passes after its own first run failed is `FIXED`.
    pub fn finish(
        &mut self,
        key: &BranchKey,
        id: i64,
        status: &str,
        verdict: Verdict,
    ) -> Result<Decided> {
        let state = self.states.get_mut(key).ok_or_else(|| {
            Error::internal("a build or task finished on a branch its batch did not read")
        })?;
        let compared = state.replace((id, status.to_owned()));
        self.changed.insert(key.clone());
        let previous = compared
            .as_ref()
            .and_then(|(_, status)| Verdict::of_name(status));
        Ok(Decided {
            previous_id: compared.map(|(id, _)| id),
            transition: transition::transition(previous, verdict),
        })
    }

    /// Writes back the states the batch's changes moved, in one statement.
    pub async fn write(&self, conn: &impl ConnectionTrait) -> Result<()> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let rows = self.changed.iter().map(|key| {
            let last = self.states.get(key).and_then(Option::as_ref);
            StateRow {
                repository_id: key.repository_id,
                branch: &key.branch,
                task_name: &key.task_name,
                last_id: last.map(|(id, _)| *id),
                last_status: last.map(|(_, status)| status.as_str()),
            }
        });
        let backend = conn.get_database_backend();
        let statement =
            Statement::from_sql_and_values(backend, write_sql(backend), [sql::rows(rows)]);
        conn.execute_raw(statement).await?;
        Ok(())
    }
}

/// A row of [`write_sql`]: a branch's new state.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct StateRow<'a> {
    repository_id: i64,
    branch: &'a str,
    task_name: &'a str,
    last_id: Option<i64>,
    last_status: Option<&'a str>,
}

impl sql::Row for StateRow<'_> {}

/// The branches' keys as a table `k`, from one [`BranchKey`] per row.
fn keys_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("k");
    format!(
        "SELECT {} AS repository_id, {} AS branch, {} AS task_name FROM {}",
        int("repository_id"),
        text("branch"),
        text("task_name"),
        sql::json_rows(backend, "k")
    )
}

/// The states of the branches. On PostgreSQL each is taken by an upsert that leaves it as it
/// is: a branch without a state gets an empty one, and one with a state is locked (waiting for
/// a transaction that holds it, and then reading what that one wrote), all in the order of
/// their keys. SQLite has one writing transaction at a time: it reads them.
fn read_sql(backend: DbBackend) -> String {
    let sql = match backend {
        DbBackend::Postgres => format!(
            "INSERT INTO branch_states (repository_id, branch, task_name)
            SELECT repository_id, branch, task_name FROM ({}) k
            WHERE true ORDER BY repository_id, branch, task_name
            ON CONFLICT (repository_id, branch, task_name)
              DO UPDATE SET last_id = branch_states.last_id
            RETURNING repository_id, branch, task_name, last_id, last_status",
            keys_sql(backend)
        ),
        _ => format!(
            "SELECT s.repository_id, s.branch, s.task_name, s.last_id, s.last_status
            FROM branch_states s JOIN ({}) k
              ON s.repository_id = k.repository_id AND s.branch = k.branch
                AND s.task_name = k.task_name",
            keys_sql(backend)
        ),
    };
    sql::numbered(backend, &sql)
}

/// Writes branches' states, one [`StateRow`] each.
fn write_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("r");
    sql::numbered(
        backend,
        &format!(
            "INSERT INTO branch_states (repository_id, branch, task_name, last_id, last_status)
            SELECT {}, {}, {}, {}, {} FROM {} WHERE true
            ON CONFLICT (repository_id, branch, task_name) DO UPDATE SET
                last_id = excluded.last_id, last_status = excluded.last_status",
            int("repository_id"),
            text("branch"),
            text("task_name"),
            int("last_id"),
            text("last_status"),
            sql::json_rows(backend, "r")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<BranchKey>(&keys_sql(backend), "k");
            sql::assert_reads_fields_of::<StateRow>(&write_sql(backend), "r");
        }
    }

    #[test]
    fn a_rerun_compares_with_the_branchs_last_finish_its_own_first_run() {
        let key = BranchKey {
            repository_id: 1,
            branch: "main".into(),
            task_name: String::new(),
        };
        let mut branches = Branches::default();
        branches.states.insert(key.clone(), None);
        let first = branches
            .finish(&key, 10, "COMPLETED", Verdict::Pass)
            .unwrap();
        assert_eq!(first, Decided::default());
        let broken = branches.finish(&key, 11, "FAILED", Verdict::Fail).unwrap();
        assert_eq!(broken.previous_id, Some(10));
        assert_eq!(broken.transition, Some(WebHookCondition::Broken));
        // Build 11 runs again and passes: the branch is fixed.
        let rerun = branches
            .finish(&key, 11, "COMPLETED", Verdict::Pass)
            .unwrap();
        assert_eq!(rerun.previous_id, Some(11));
        assert_eq!(rerun.transition, Some(WebHookCondition::Fixed));
        let next = branches.finish(&key, 12, "ERRORED", Verdict::Fail).unwrap();
        assert_eq!(next.previous_id, Some(11));
        assert_eq!(next.transition, Some(WebHookCondition::Broken));
        let unread = BranchKey {
            branch: "dev".into(),
            ..key
        };
        assert!(
            branches
                .finish(&unread, 13, "FAILED", Verdict::Fail)
                .is_err()
        );
    }
}
