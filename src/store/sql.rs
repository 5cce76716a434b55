//! Pieces of the hand-written statements of the delivery queue, for either backend.
//!
//! Lists (ids, or rows of several fields) are bound as one parameter, so that a statement's
//! text is the same however long its list: each pooled connection prepares it once and keeps it
//! (sqlx caches prepared statements per connection), instead of parsing and planning a new text
//! for every claim and every batch of outcomes.
//!
//! A row of several fields is a JSON object, a [`Row`] struct serialized, and the statement
//! reads each field by its name ([`field`], [`int_field`]): the statement and the struct agree
//! on names, not on an order that reordering either would silently break.

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
/// row is `{alias}.value`, a JSON object whose fields are read by name with [`field`] and
/// [`int_field`].
pub fn json_rows(backend: DbBackend, alias: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("jsonb_array_elements(CAST(? AS jsonb)) AS {alias}"),
        // `jsonb_each`, not `json_each`: each row's object comes as JSONB, which `->>` reads in
        // place; `json_each` renders it back to text, which each field's `->>` parses again.
        _ => format!("jsonb_each(?) AS {alias}"),
    }
}

/// A row of a [`json_rows`] table: a struct with named fields (`#[derive(serde::Serialize)]`,
/// borrowing what it can), which serializes as a JSON object whose keys are the names that
/// [`field`] and [`int_field`] read. A tuple or an array, which would serialize as a JSON array
/// read by position, is not a `Row`.
pub trait Row: serde::Serialize {}

impl<T: Row> Row for &T {}

/// The parameter of [`json_rows`]: a JSON array of one object per row (serialized straight to
/// text).
pub fn rows<T: Row>(rows: impl IntoIterator<Item = T>) -> Value {
    let rows: Vec<T> = rows.into_iter().collect();
    let json = serde_json::to_string(&rows).expect("rows of numbers and strings serialize");
    debug_assert!(
        json == "[]" || json.starts_with("[{"),
        "rows serialize as JSON objects"
    );
    json.into()
}

/// [`int_field`] and [`field`] of the rows named `alias`, as a pair of functions of the
/// field's name.
pub fn fields(alias: &'static str) -> (impl Fn(&str) -> String, impl Fn(&str) -> String) {
    (
        move |name: &str| int_field(alias, name),
        move |name: &str| field(alias, name),
    )
}

/// Field `name` of a [`json_rows`] row, as text (SQL `NULL` for JSON `null`, or for a name the
/// row does not have).
pub fn field(alias: &str, name: &str) -> String {
    format!("({alias}.value ->> '{}')", key(name))
}

/// Field `name` of a [`json_rows`] row, as an integer.
pub fn int_field(alias: &str, name: &str) -> String {
    format!("CAST({alias}.value ->> '{}' AS BIGINT)", key(name))
}

/// `name`, checked to be a plain identifier (`[a-z_]+`), as a row's fields are: it goes into
/// the statement's text, quoted.
fn key(name: &str) -> &str {
    assert!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "a row's field is named with [a-z_]+, not {name:?}"
    );
    name
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

/// Asserts that the fields `sql` reads of its rows named `alias` are exactly those of `T`: no
/// name misspelled (it would read `NULL`), and none left unread.
#[cfg(test)]
pub fn assert_reads_fields_of<T: Row + Default>(sql: &str, alias: &str) {
    use std::collections::BTreeSet;
    let serde_json::Value::Object(row) = serde_json::to_value(T::default()).unwrap() else {
        panic!("a row serializes as a JSON object");
    };
    let written: BTreeSet<&str> = row.keys().map(String::as_str).collect();
    let prefix = format!("{alias}.value ->> '");
    let read: BTreeSet<&str> = sql
        .match_indices(&prefix)
        .map(|(at, _)| {
            let rest = &sql[at + prefix.len()..];
            &rest[..rest.find('\'').unwrap()]
        })
        .collect();
    assert_eq!(read, written, "the fields read of {alias} in:\n{sql}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_name() {
        assert_eq!(field("o", "state"), "(o.value ->> 'state')");
        assert_eq!(int_field("o", "id"), "CAST(o.value ->> 'id' AS BIGINT)");
    }

    #[test]
    #[should_panic(expected = "[a-z_]+")]
    fn a_field_name_is_a_plain_identifier() {
        field("o", "x') OR ('1");
    }

    #[test]
    fn rows_are_json_objects() {
        #[derive(serde::Serialize)]
        struct Pair<'a> {
            id: i64,
            token: Option<&'a str>,
        }
        impl Row for Pair<'_> {}
        let pairs = [
            Pair {
                id: 1,
                token: Some("a\"b"),
            },
            Pair { id: 2, token: None },
        ];
        assert_eq!(
            rows(pairs),
            Value::from(r#"[{"id":1,"token":"a\"b"},{"id":2,"token":null}]"#)
        );
    }
}
