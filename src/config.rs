//! One typed configuration for `serve` and `worker`: defaults < environment < flags.
//!
//! clap reads both the flags and the `HERALD_*` variables, so `--help` shows every option with
//! its variable and default. Values are parsed into their types here, so a bad one stops Herald
//! at start with one sentence naming the option.

use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::RetrySchedule;
use crate::domain::retry::parse_duration;

/// The embedded default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db?mode=rwc";

/// Where the data lives; shared by every command that touches the database.
#[derive(clap::Args, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://…` (embedded) or `postgres://…`.
    #[arg(long, env = "HERALD_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("database_url", &redact_url(&self.database_url))
            .finish()
    }
}

/// Everything `serve` and `worker` need.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// HTTP address of the API and console.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Allow deliveries to loopback, private and link-local addresses (`true`/`1` = on).
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_TARGETS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_targets: bool,

    /// Internal networks deliveries may reach even when private targets are not allowed,
    /// as comma-separated CIDRs (`10.1.2.0/24,fd00::/8`).
    #[arg(long, env = "HERALD_ALLOWED_TARGETS", value_delimiter = ',', value_parser = parse_cidr)]
    pub allowed_targets: Vec<ipnet::IpNet>,

    /// Delays between attempts after the first (N delays = N+1 attempts); ms, s, m, h units.
    #[arg(long, env = "HERALD_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = RetrySchedule::parse)]
    pub retry_schedule: RetrySchedule,

    /// Whole-request timeout for one delivery attempt.
    #[arg(long, env = "HERALD_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// How long a claimed delivery stays claimed; a crashed worker's claims are free after it.
    #[arg(long, env = "HERALD_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// How many deliveries one worker sends at once.
    #[arg(long, env = "HERALD_WORKER_CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,

    /// How many deliveries to one endpoint one worker sends at once.
    #[arg(long, env = "HERALD_ENDPOINT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub endpoint_concurrency: u32,

    /// On shutdown, how long in-flight attempts may take before they are abandoned (their
    /// leases expire and another worker sends them again), and HTTP requests before their
    /// connections are closed.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// The key that seals endpoint secrets and URL credentials at rest: 32 bytes, as 64
    /// hexadecimal digits or base64. Read from the environment only, so it stays out of `ps`.
    #[arg(long = "encryption-key", env = "HERALD_ENCRYPTION_KEY", hide = true, hide_env_values = true, value_parser = parse_secret)]
    pub encryption_key: Option<Secret>,
    /// Where people open Herald (or Cirrus CI): Slack messages link builds and tasks to
    /// `<public-url>/build/<id>` and `<public-url>/task/<id>`; no links when unset.
    #[arg(long, env = "HERALD_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// The most webhook endpoints one organization may have.
    #[arg(long, env = "HERALD_MAX_ENDPOINTS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_endpoints: u32,

    /// How long a client may take to send a request's headers; a connection that has not sent
    /// them by then, or stays idle that long between requests, is closed. Bounds what a
    /// connection that trickles bytes ("slowloris") can hold.
    #[arg(long, env = "HERALD_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// How long a client may take to send a request's body once its headers arrived; a slower
    /// body is answered 408.
    #[arg(long, env = "HERALD_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// How long one request may run from its headers to its answer; a request still running
    /// then is stopped and answered 503.
    #[arg(long, env = "HERALD_HTTP_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,

    /// The most HTTP connections open at once. Past it, new connections wait in the listen
    /// queue until one closes (the header timeout bounds how long an idle one holds its
    /// place). Together with the worker's connections it must fit the process's open-files
    /// limit, which is checked at start.
    #[arg(long, env = "HERALD_HTTP_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,

    /// Serve GraphiQL at `GET /graphql` and answer introspection queries (from requests with a
    /// valid token only).
    #[arg(long, env = "HERALD_GRAPHIQL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub graphiql: bool,
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret(text.to_owned()))
}

fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR network such as 10.1.2.0/24"))
}

impl Config {
    /// Refuses settings that would break a promise: the lease must outlast an attempt with room
    /// to spare (twice the timeout), or an attempt still waiting for its answer loses its claim
    /// and another one sends the same delivery again.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.lease < self.delivery_timeout * 2 {
            anyhow::bail!(
                "HERALD_LEASE ({}) must be at least twice HERALD_DELIVERY_TIMEOUT ({}), so that a delivery is still claimed when its attempt ends",
                crate::domain::retry::format_duration(self.lease),
                crate::domain::retry::format_duration(self.delivery_timeout),
            );
        }
        let http = [
            ("HERALD_HTTP_HEADER_TIMEOUT", self.http_header_timeout),
            ("HERALD_HTTP_BODY_TIMEOUT", self.http_body_timeout),
            ("HERALD_HTTP_REQUEST_TIMEOUT", self.http_request_timeout),
        ];
        for (name, value) in http {
            if value.is_zero() {
                anyhow::bail!("{name} must be longer than 0s");
            }
        }
        if self.http_body_timeout > self.http_request_timeout {
            anyhow::bail!(
                "HERALD_HTTP_BODY_TIMEOUT ({}) must not be longer than HERALD_HTTP_REQUEST_TIMEOUT ({}), which includes reading the body",
                crate::domain::retry::format_duration(self.http_body_timeout),
                crate::domain::retry::format_duration(self.http_request_timeout),
            );
        }
        Ok(())
    }

    /// The configuration with every default and no environment, for tests and embedding.
    pub fn defaults(database_url: impl Into<String>) -> Self {
        use clap::{Args, FromArgMatches};
        let command = Config::augment_args(clap::Command::new("herald").no_binary_name(true));
        let matches = command.get_matches_from(["--database-url", &database_url.into()]);
        Config::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Parses a public base URL (http or https), without its trailing slash.
pub fn parse_public_url(text: &str) -> Result<String, String> {
    let url =
        url::Url::parse(text.trim()).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A secret value whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A database URL with its user name and password hidden (`***:***`), for logs and errors.
/// One that does not parse is not shown at all: where its credentials are cannot be told.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() {
                let _ = parsed.set_username("***");
            }
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}
