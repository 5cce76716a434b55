//! One error type for everything a request can run into.
//!
//! Each variant names an outcome; its `Display` is the one sentence a client sees. Internal
//! causes are logged where they are converted and never returned.

/// What went wrong, as the client may learn it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid token accompanied a request that needs one.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but its permission is too low.
    #[error("This operation needs {0} permission.")]
    Forbidden(&'static str),
    /// An approval hook refused the change; the sentence names the hook and its reason.
    #[error("{0}")]
    Rejected(String),
    /// The thing does not exist, or belongs to another organization.
    #[error("No {what} {id} exists.")]
    NotFound { what: &'static str, id: String },
    /// The change collides with something that exists.
    #[error("{0}")]
    Conflict(String),
    /// The input is wrong; the sentence says what.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached, or it rolled the change back in a conflict with
    /// another (see [`is_conflict`]); nothing was changed, and the same change may succeed if
    /// made again.
    #[error("The database is unavailable right now; nothing was changed, try again.")]
    Unavailable,
    /// The database did not answer the commit: the change may or may not have been recorded.
    #[error(
        "The database did not confirm the change, so it may have been recorded; check before making it again."
    )]
    Unconfirmed,
    /// Anything else; the cause is in the log.
    #[error("Herald hit an internal error; nothing was changed and the cause was logged.")]
    Internal,
}

/// Results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A `NotFound` for the given kind of thing and id.
    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Logs an internal cause and returns the opaque error that is shown instead.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal
    }

    /// The GraphQL `extensions.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) | Self::Rejected(_) => "FORBIDDEN",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Invalid(_) => "BAD_USER_INPUT",
            Self::Unavailable | Self::Unconfirmed | Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status used where this error ends a plain HTTP request.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) | Self::Rejected(_) => 403,
            Self::NotFound { .. } => 404,
            Self::Conflict(_) => 409,
            Self::Invalid(_) => 400,
            Self::Unavailable | Self::Unconfirmed => 503,
            Self::Internal => 500,
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        if is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable
        } else if is_conflict(&err) {
            tracing::warn!(error = %err, "the database rolled a transaction back in a conflict");
            Self::Unavailable
        } else {
            Self::internal(err)
        }
    }
}

/// Whether a database error means the database could not be reached (down, restarting, or
/// our connection was terminated), as opposed to a fault in the statement.
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, sqlx};
    if matches!(err, DbErr::ConnectionAcquire(_)) {
        return true;
    }
    let Some(sqlx_err) = sqlx_error(err) else {
        return matches!(err, DbErr::Conn(_));
    };
    match sqlx_err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception) and 57P (operator intervention: shutdown,
        // crash, terminated backend).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => matches!(err, DbErr::Conn(_)),
    }
}

/// Whether the database rolled a transaction back to settle a conflict with another one, so
/// that the same transaction may succeed if run again: on PostgreSQL, a deadlock (`40P01`) or
/// a serialization failure (`40001`); on SQLite, `SQLITE_BUSY` (another process held the
/// database past the busy timeout) in any of its extended codes.
pub fn is_conflict(err: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx;
    let Some(sqlx::Error::Database(db)) = sqlx_error(err) else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        matches!(code.as_ref(), "40001" | "40P01")
    } else {
        // SQLite's extended codes keep the primary code in their low byte.
        code.parse::<i32>().is_ok_and(|code| code & 0xff == 5)
    }
}

/// The driver's error under a connection, statement or query error, if there is one.
fn sqlx_error(err: &sea_orm::DbErr) -> Option<&sea_orm::sqlx::Error> {
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(sqlx_err))
        | DbErr::Exec(RuntimeErr::SqlxError(sqlx_err))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_err)) => Some(sqlx_err.as_ref()),
        _ => None,
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(err: sea_orm::TransactionError<Error>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(err) => err,
        }
    }
}
