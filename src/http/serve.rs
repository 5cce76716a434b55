//! The HTTP server's connections: accepted up to a cap, each read under a header timeout, and
//! all of them ended within the shutdown grace.
//!
//! The per-request limits (body and whole-request timeouts) live in [`crate::http`]; this
//! module bounds what a connection can hold before a request exists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::Config;

/// Open files the process keeps for itself beside HTTP connections and the worker's outbound
/// connections: the database pools, the listener, logs, DNS sockets.
const RESERVED_FILES: u64 = 256;

/// The most bytes of request line and headers one request may send (431 past it). A token is at
/// most 4 KiB; the bound keeps what a connection without a request can hold small, so the
/// connection cap also caps memory.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The most a connection's read buffer grows to (hyper's default is about 400 KiB); bodies
/// stream through it to the handler.
const MAX_READ_BUFFER_BYTES: usize = 64 * 1024;

/// What bounds the server's connections, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers (and stay idle between
    /// requests).
    pub header_timeout: Duration,
    /// How long connections have after the shutdown begins.
    pub grace: Duration,
}

impl ConnectionLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_connections: config.http_max_connections as usize,
            header_timeout: config.http_header_timeout,
            grace: config.shutdown_grace,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish their
/// requests for at most the grace and closes whatever is left.
///
/// The connection cap waits rather than refuses: at the cap the server stops accepting, so a
/// new connection waits in the kernel's listen queue and is served, in order, as soon as another
/// closes. A refusal would fail a health check outright, where waiting serves it once a slot
/// frees; and no connection holds a slot for long without a request, since one that has not
/// sent its headers within the header timeout (or is idle that long between requests) is
/// closed. A request with its headers is bounded by the request timeout.
///
/// On shutdown, idle connections close at once and connections in a request finish it; a
/// connection still in a request (or still trickling its headers) when the grace ends is
/// closed, so the shutdown never waits on a client.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.context("the connection slots closed")?,
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                // Handlers read the peer's address from here (the audit log's actorLocationIP),
                // as `axum::serve` with connect info provides it.
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            });
        // A client that stops reading its answers would hold the connection, and its slot,
        // for as long as it likes: a write that makes no progress for the header timeout ends
        // the connection.
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.header_timeout));
        let connection = http.serve_connection(
            TokioIo::new(Box::pin(stream)),
            TowerToHyperService::new(service),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return finished(peer, result),
                _ = shutdown.cancelled() => {}
            }
            // Idle connections close at once; one in a request ends after its answer.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.grace, connection).await {
                Ok(result) => finished(peer, result),
                Err(_) => tracing::debug!(%peer, "closed a connection still open at the end of the shutdown grace"),
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Logs how a connection ended, when that is worth a line.
fn finished(peer: SocketAddr, result: Result<(), hyper::Error>) {
    match result {
        Ok(()) => {}
        // A header timeout is the expected end of a slow or idle client, not a fault.
        Err(err) if err.is_timeout() => {
            tracing::debug!(%peer, "closed a connection that sent no complete request headers in time")
        }
        Err(err) => tracing::debug!(%peer, error = %err, "a connection ended with an error"),
    }
}

/// Waits after a failed accept. A connection that failed before it was accepted concerns only
/// its client; anything else (out of open files, above all) is the process's, and accepting
/// again at once would spin, so the loop pauses while connections close.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed; retrying in one second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Makes sure the process may open the files its limits imply: every HTTP connection, every
/// delivery the worker sends at once, and [`RESERVED_FILES`]. The soft limit is raised to the
/// hard one first, as most services do, since the soft default (often 1,024) is far below
/// what a server needs. A limit still too low stops the start with one sentence, rather than
/// fail accepts (or deliveries) under load.
pub fn ensure_open_files(config: &Config) -> anyhow::Result<()> {
    let needed = u64::from(config.http_max_connections)
        + u64::from(config.worker_concurrency)
        + RESERVED_FILES;
    let Some(available) = raise_open_files_limit() else {
        return Ok(());
    };
    if available < needed {
        anyhow::bail!(
            "HERALD_HTTP_MAX_CONNECTIONS ({}) and HERALD_WORKER_CONCURRENCY ({}) need {needed} open files with the {RESERVED_FILES} Herald keeps for itself, but the process may open only {available}; raise the limit (ulimit -n) or lower HERALD_HTTP_MAX_CONNECTIONS",
            config.http_max_connections,
            config.worker_concurrency,
        );
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit and returns the soft limit now in force;
/// `None` where the limit cannot be read (or is unlimited).
#[cfg(unix)]
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // `rlim_t` is not `u64` on every platform.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft)
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> Option<u64> {
    None
}
