//! What receivers ask for beyond every status: each branch's last finished build (and task, by
//! name), which decides a finishing build's or task's transition (`BROKEN`, `FIXED`, …) in the
//! change's transaction, kept on the build or task with the one it was decided against; the
//! endpoint's `conditions`; and a gap-free sequence per endpoint (`X-Herald-Sequence`), counted
//! in `endpoint_sequences` and kept on each delivery.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261231_000001_transitions_and_sequences"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum BranchStates {
    Table,
    RepositoryId,
    Branch,
    TaskName,
    LastId,
    LastStatus,
}

#[derive(DeriveIden, Clone, Copy)]
enum EndpointSequences {
    Table,
    EndpointId,
    LastSequence,
}

#[derive(DeriveIden, Clone, Copy)]
enum Builds {
    Table,
    Transition,
    PreviousBuildId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Transition,
    PreviousTaskId,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookEndpoints {
    Table,
    Conditions,
}

#[derive(DeriveIden, Clone, Copy)]
enum Deliveries {
    Table,
    EndpointId,
    Sequence,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(BranchStates::Table)
                    .col(big_integer(BranchStates::RepositoryId))
                    .col(string(BranchStates::Branch))
                    // Empty for the branch's builds, else the tasks of that name.
                    .col(string(BranchStates::TaskName))
                    .col(big_integer_null(BranchStates::LastId))
                    .col(string_null(BranchStates::LastStatus))
                    .primary_key(
                        Index::create()
                            .col(BranchStates::RepositoryId)
                            .col(BranchStates::Branch)
                            .col(BranchStates::TaskName),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EndpointSequences::Table)
                    .col(big_integer(EndpointSequences::EndpointId).primary_key())
                    .col(big_integer(EndpointSequences::LastSequence))
                    .to_owned(),
            )
            .await?;
        // SQLite alters one column a statement.
        let columns = [
            (Builds::Table.into_iden(), string_null(Builds::Transition)),
            (
                Builds::Table.into_iden(),
                big_integer_null(Builds::PreviousBuildId),
            ),
            (Tasks::Table.into_iden(), string_null(Tasks::Transition)),
            (
                Tasks::Table.into_iden(),
                big_integer_null(Tasks::PreviousTaskId),
            ),
            (
                WebhookEndpoints::Table.into_iden(),
                string(WebhookEndpoints::Conditions)
                    .default("[]")
                    .to_owned(),
            ),
            // Null on deliveries that are never sent and on those queued before sequences.
            (
                Deliveries::Table.into_iden(),
                big_integer_null(Deliveries::Sequence),
            ),
        ];
        for (table, mut column) in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("deliveries_by_sequence")
                    .table(Deliveries::Table)
                    .col(Deliveries::EndpointId)
                    .col(Deliveries::Sequence)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Each branch's last finish as its history so far has it, so that the first finishes
        // after the upgrade compare with the builds and tasks before it.
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO branch_states (repository_id, branch, task_name, last_id, last_status)
            SELECT repository_id, branch, '', id, status FROM (
                SELECT repository_id, branch, id, status, row_number() OVER (
                    PARTITION BY repository_id, branch
                    ORDER BY COALESCE(final_status_timestamp, status_timestamp) DESC, id DESC) AS k
                FROM builds WHERE status IN ('COMPLETED', 'FAILED', 'ERRORED')) last
            WHERE k = 1",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO branch_states (repository_id, branch, task_name, last_id, last_status)
            SELECT repository_id, branch, name, id, status FROM (
                SELECT t.repository_id, b.branch, t.name, t.id, t.status, row_number() OVER (
                    PARTITION BY t.repository_id, b.branch, t.name
                    ORDER BY COALESCE(t.final_status_timestamp, t.status_timestamp) DESC, t.id DESC)
                  AS k
                FROM tasks t JOIN builds b ON b.id = t.build_id
                WHERE t.status IN ('COMPLETED', 'FAILED')) last
            WHERE k = 1",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("deliveries_by_sequence")
                    .table(Deliveries::Table)
                    .to_owned(),
            )
            .await?;
        let columns = [
            (
                Deliveries::Table.into_iden(),
                Deliveries::Sequence.into_iden(),
            ),
            (
                WebhookEndpoints::Table.into_iden(),
                WebhookEndpoints::Conditions.into_iden(),
            ),
            (Tasks::Table.into_iden(), Tasks::PreviousTaskId.into_iden()),
            (Tasks::Table.into_iden(), Tasks::Transition.into_iden()),
            (
                Builds::Table.into_iden(),
                Builds::PreviousBuildId.into_iden(),
            ),
            (Builds::Table.into_iden(), Builds::Transition.into_iden()),
        ];
        for (table, column) in columns {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(EndpointSequences::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(BranchStates::Table).to_owned())
            .await
    }
}
