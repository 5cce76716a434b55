//! Wakes the worker when another process commits deliveries: `LISTEN` on PostgreSQL. What this
//! process announced is skipped: it woke the worker directly.
//!
//! The connection is re-established with backoff when it drops (a database restart, a
//! terminated backend); a notification missed meanwhile costs at most the worker's poll interval.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::store::Writes;
use crate::store::deliveries::CHANNEL;

/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on `url` until `shutdown`, waking the worker (through `writes`) on every
/// reconnection and on every notification but this process's own (see [`Writes::announcer`]).
pub async fn listen(url: String, writes: Writes, shutdown: CancellationToken) {
    let own = writes.announcer().to_owned();
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut listener =
                PgListener::connect(&crate::store::tls::without_loopback_tls(&url)).await?;
            listener.listen(CHANNEL).await?;
            tracing::debug!("listening for deliveries");
            // Anything committed while we were not listening is picked up now.
            writes.wake();
            loop {
                // `None` means the connection dropped and was re-established.
                let notification = listener.try_recv().await?;
                if notification.is_none_or(|n| n.payload() != own) {
                    writes.wake();
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, retry_in = ?backoff, "listening for deliveries failed");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
