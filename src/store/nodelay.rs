//! TCP_NODELAY for PostgreSQL connections.
//!
//! sqlx 0.9.0 opens its TCP connections with Nagle's algorithm on and offers no handle on the
//! socket. A statement whose messages leave in more than one segment then waits for the
//! server's delayed ACK (40 ms on Linux), which bounds a worker's batches of outcomes. So each
//! new connection asks the server which client port it sees (`inet_client_port()`), and the
//! option is set on the one socket of this process with that local port and the database's
//! port as its peer. Behind a proxy or a NAT the server sees another port (or the question
//! fails); then every socket of this process connected to the database's port gets it, which
//! harms none (outbound webhooks set it anyway).

use std::net::SocketAddr;

/// Turns Nagle's algorithm off on the TCP socket of this process whose local port is `local`
/// and whose peer's port is `peer` (the database's): the connection just opened. When no
/// socket has that local port (the server saw another one), or `local` is not known, every
/// socket whose peer's port is `peer` gets it. Failures are ignored, since the connection
/// works either way, only slower.
#[cfg(target_os = "linux")]
pub fn disable_nagle(local: Option<u16>, peer: u16) {
    let port = |addr: std::io::Result<socket2::SockAddr>| {
        addr.ok()
            .and_then(|addr| addr.as_socket())
            .map(|addr: SocketAddr| addr.port())
    };
    let mut found = false;
    if let Some(local) = local {
        each_socket(|socket| {
            if port(socket.local_addr()) == Some(local) && port(socket.peer_addr()) == Some(peer) {
                found = true;
                let _ = socket.set_tcp_nodelay(true);
            }
        });
    }
    if !found {
        each_socket(|socket| {
            if port(socket.peer_addr()) == Some(peer) {
                let _ = socket.set_tcp_nodelay(true);
            }
        });
    }
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
pub fn disable_nagle(_local: Option<u16>, _peer: u16) {}

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

    /// Only the socket of the connection just opened gets the option.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_socket_of_the_connection_gets_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connection = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let same_peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let elsewhere = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!connection.nodelay().unwrap());
        disable_nagle(
            Some(connection.local_addr().unwrap().port()),
            listener.local_addr().unwrap().port(),
        );
        assert!(connection.nodelay().unwrap());
        assert!(
            !same_peer.nodelay().unwrap(),
            "another socket to the same port"
        );
        assert!(!elsewhere.nodelay().unwrap());
        // Behind a proxy the server names a port this process does not have: every socket to
        // the database's port gets the option.
        disable_nagle(
            Some(other.local_addr().unwrap().port()),
            listener.local_addr().unwrap().port(),
        );
        assert!(same_peer.nodelay().unwrap());
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
