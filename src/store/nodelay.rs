//! TCP_NODELAY for PostgreSQL connections.
//!
//! sqlx 0.9.0 opens its TCP connections with Nagle's algorithm on (the option was dropped in
//! that release; the fix, transact-rs/sqlx#4336, is not released). A statement whose messages
//! leave in more than one segment then waits for the server's delayed ACK, 40 ms on Linux: a
//! batch of outcomes took 60–70 ms while none of its statements took 3 ms in the server, and the
//! worker drained a backlog at a quarter of its speed over TCP against over a Unix socket. sqlx
//! offers no handle on the socket, so each new connection's socket is found among the process's
//! own and the option is set on it.

use std::net::SocketAddr;

/// Turns Nagle's algorithm off on every TCP socket of this process connected to port `port`
/// (the database's), the connection just opened among them. Sockets already set are unchanged;
/// failures are ignored, since the connection works either way, only slower.
#[cfg(target_os = "linux")]
pub fn disable_nagle(port: u16) {
    each_socket(|socket| {
        let peer: Option<SocketAddr> = socket.peer_addr().ok().and_then(|addr| addr.as_socket());
        if peer.is_some_and(|peer| peer.port() == port) {
            let _ = socket.set_tcp_nodelay(true);
        }
    });
}

/// Calls `f` with each socket the process has open.
#[cfg(target_os = "linux")]
fn each_socket(mut f: impl FnMut(socket2::SockRef<'_>)) {
    use std::os::fd::{BorrowedFd, RawFd};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor was open when listed and is only borrowed for a few system
        // calls on it. Were another thread to close it meanwhile, the calls fail (EBADF,
        // ENOTSOCK) or reach a socket that reused the number, where they read its addresses
        // and, for a TCP peer on the database's port, turn Nagle's algorithm off.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        f(socket2::SockRef::from(&fd));
    }
}

/// Elsewhere the connections keep the system's default.
#[cfg(not(target_os = "linux"))]
pub fn disable_nagle(_port: u16) {}

/// The TCP port a `postgres://` URL connects to; none when it names a Unix socket directory.
pub fn postgres_port(url: &str) -> Option<u16> {
    let parsed = url::Url::parse(url).ok()?;
    let socket_dir = parsed
        .query_pairs()
        .any(|(key, value)| key == "host" && value.starts_with('/'));
    if socket_dir || parsed.host_str().is_none_or(|host| host.starts_with("%2F")) {
        return None;
    }
    Some(parsed.port().unwrap_or(5432))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_of_a_tcp_url_and_none_for_a_socket_directory() {
        assert_eq!(postgres_port("postgres://u@db:6543/x"), Some(6543));
        assert_eq!(postgres_port("postgres://u@127.0.0.1/x"), Some(5432));
        assert_eq!(
            postgres_port("postgres://u@localhost/x?host=/var/run/postgresql"),
            None
        );
        assert_eq!(
            postgres_port("postgres://u@%2Fvar%2Frun%2Fpostgresql/x"),
            None
        );
    }

    /// A connection opened by the pool has Nagle's algorithm off, so a statement sent in
    /// several segments is not held for the server's delayed ACK.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_to_the_port_gets_nodelay_and_others_do_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_port = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let elsewhere = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_port.nodelay().unwrap());
        disable_nagle(listener.local_addr().unwrap().port());
        assert!(to_port.nodelay().unwrap());
        assert!(!elsewhere.nodelay().unwrap());
    }

    /// The pool's connections to PostgreSQL (`HERALD_TEST_POSTGRES_URL`) have Nagle's algorithm
    /// off: each is found by the client port the server sees for it.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pooled_postgres_connections_have_nagle_off() {
        use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};
        let Ok(base) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
            return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
        };
        let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&base).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&format!("/{name}"));
        let db = crate::store::connect(url.as_str()).await.unwrap();
        // Three transactions at once hold three connections of the pool.
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(db.begin().await.unwrap());
        }
        let mut ports = Vec::new();
        for tx in &open {
            let statement =
                Statement::from_string(DbBackend::Postgres, "SELECT inet_client_port() AS port");
            let row = tx.query_one_raw(statement).await.unwrap().unwrap();
            ports.push(row.try_get::<i32>("", "port").unwrap() as u16);
        }
        let mut nodelay = Vec::new();
        each_socket(|socket| {
            let local = socket.local_addr().ok().and_then(|addr| addr.as_socket());
            if local.is_some_and(|local| ports.contains(&local.port())) {
                nodelay.push(socket.tcp_nodelay().unwrap());
            }
        });
        drop(open);
        db.close().await.unwrap();
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        assert_eq!(
            nodelay,
            vec![true; 3],
            "one socket per connection, each without Nagle"
        );
    }
}
