//! Pieces of the hand-written statements of the delivery queue, for either backend.
//!
//! Lists (ids, or rows of several fields) are bound as one parameter, so that a statement's
//! text is the same however long its list: each pooled connection prepares it once and keeps it
//! (sqlx caches prepared statements per connection), instead of parsing and planning a new text
//! for every claim and every batch of outcomes.

use sea_orm::{DbBackend, Value};

/// `column` is one of the ids bound, as [`ids`], to the one parameter this adds.
///
/// On PostgreSQL the list is read once, in a subquery of its own. A plan that tests it on each
/// row of a scan (which a statement prepared while its table was nearly empty may keep for
/// good, until the table is analyzed) would otherwise parse the whole list again for each row.
pub fn in_ids(backend: DbBackend, column: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("{column} = ANY(ARRAY(SELECT unnest(CAST(? AS BIGINT[]))))"),
        _ => format!("{column} IN (SELECT value FROM json_each(?))"),
    }
}

/// On PostgreSQL, `AND` [`in_ids`] for a statement that joins a table to its [`json_rows`] by
/// primary key: its planner then reads the listed rows by key rather than join the whole table.
/// SQLite reads them by key from the rows' own ids (with a list as well, it would read every
/// listed row again for each one), so it gets nothing. Bind [`pg_ids`] after the rows.
pub fn pg_by_ids(backend: DbBackend, column: &str) -> String {
    if backend == DbBackend::Postgres {
        format!("AND {}", in_ids(backend, column))
    } else {
        String::new()
    }
}

/// The parameter of [`pg_by_ids`], which only PostgreSQL takes.
pub fn pg_ids(backend: DbBackend, ids: impl IntoIterator<Item = i64>) -> Option<Value> {
    (backend == DbBackend::Postgres)
        .then(|| self::ids(backend, &ids.into_iter().collect::<Vec<_>>()))
}

/// The parameter of [`in_ids`]: a PostgreSQL array literal, or a JSON array for SQLite.
pub fn ids(backend: DbBackend, ids: &[i64]) -> Value {
    let list = id_list(ids);
    match backend {
        DbBackend::Postgres => format!("{{{list}}}"),
        _ => format!("[{list}]"),
    }
    .into()
}

/// A table of the rows bound, as [`rows`], to the one parameter this adds, named `alias`; each
/// row is `{alias}.value`, a JSON array whose fields are read with [`field`] and [`int_field`].
pub fn json_rows(backend: DbBackend, alias: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("jsonb_array_elements(CAST(? AS jsonb)) AS {alias}"),
        // `jsonb_each`, not `json_each`: each row's array comes as JSONB, which `->>` reads in
        // place; `json_each` renders it back to text, which each field's `->>` parses again.
        _ => format!("jsonb_each(?) AS {alias}"),
    }
}

/// The parameter of [`json_rows`]: one JSON array per row, each row a tuple of its fields
/// (serialized straight to text, borrowing them).
pub fn rows<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Value {
    let rows: Vec<T> = rows.into_iter().collect();
    serde_json::to_string(&rows)
        .expect("tuples of numbers and strings serialize")
        .into()
}

/// Field `n` of a [`json_rows`] row, as text (SQL `NULL` for JSON `null`).
pub fn field(alias: &str, n: usize) -> String {
    format!("({alias}.value ->> {n})")
}

/// Field `n` of a [`json_rows`] row, as an integer.
pub fn int_field(alias: &str, n: usize) -> String {
    format!("CAST({alias}.value ->> {n} AS BIGINT)")
}

/// An index hint for SQLite (`INDEXED BY …`, `NOT INDEXED`), whose planner has no statistics
/// to choose by; PostgreSQL plans from its own and takes none.
pub fn sqlite_hint(backend: DbBackend, hint: &'static str) -> &'static str {
    if backend == DbBackend::Sqlite {
        hint
    } else {
        ""
    }
}

/// Ids as an SQL list; they are integers, so nothing can be injected.
fn id_list(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    ids.join(",")
}

/// Rewrites `?` placeholders as `$1, $2, …` for PostgreSQL.
pub fn numbered(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}
