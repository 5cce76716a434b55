//! TLS to PostgreSQL on the same machine.
//!
//! sqlx, like libpq, defaults to `sslmode=prefer`: it encrypts whenever the server offers TLS,
//! which Debian's PostgreSQL does out of the box, even over loopback, where the traffic never
//! leaves the machine. There it protects nothing and costs every statement an encryption on
//! both sides: `perf` of a server under `ingest-deliver` put a fifth of its time in rustls.

use std::borrow::Cow;
use std::net::IpAddr;

/// `url` as Herald connects with it: a `postgres://` URL to a loopback host that chooses no
/// `sslmode` (neither in the URL nor in `PGSSLMODE`) gets `sslmode=disable`; any other URL is
/// unchanged, so an explicit `sslmode` always wins.
pub fn without_loopback_tls(url: &str) -> Cow<'_, str> {
    if std::env::var_os("PGSSLMODE").is_some() {
        return Cow::Borrowed(url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) if is_loopback_postgres(&parsed) => {
            parsed.query_pairs_mut().append_pair("sslmode", "disable");
            Cow::Owned(parsed.into())
        }
        _ => Cow::Borrowed(url),
    }
}

/// Whether `url` is a `postgres://` URL to a loopback host over TCP that names no `sslmode`.
fn is_loopback_postgres(url: &url::Url) -> bool {
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return false;
    }
    let chosen = url
        .query_pairs()
        .any(|(key, _)| matches!(&*key, "sslmode" | "ssl-mode" | "host" | "hostaddr"));
    if chosen {
        return false;
    }
    // A `postgres:` URL's host is opaque to the `url` crate (not a special scheme), so an
    // IPv4 address comes back as a name.
    match url.host() {
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_without_a_choice_connect_in_the_clear() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return eprintln!("skipped: PGSSLMODE is set");
        }
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgresql://u:p@localhost/db",
            "postgres://u@[::1]:6543/db?application_name=herald",
            "postgres://u@127.0.0.2/db",
        ] {
            let plain = without_loopback_tls(url);
            assert!(plain.contains("sslmode=disable"), "{url} became {plain}");
            assert!(plain.starts_with(url.split('?').next().unwrap()), "{plain}");
        }
    }

    #[test]
    fn an_explicit_choice_or_another_host_is_left_alone() {
        for url in [
            "postgres://u@127.0.0.1/db?sslmode=require",
            "postgres://u@localhost/db?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u@127.0.0.1/db?ssl-mode=require",
            "postgres://u@db.internal/db",
            "postgres://u@10.0.0.5:5432/db",
            "postgres://u@localhost/db?host=/var/run/postgresql",
            "sqlite://herald.db?mode=rwc",
        ] {
            assert_eq!(without_loopback_tls(url), url);
        }
    }
}
