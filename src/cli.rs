//! The command line. Exit codes: 0 success, 1 runtime failure, 2 bad usage.

use std::io::Read as _;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http::StatusCode;
use clap::{ArgGroup, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppState, Role};
use crate::config::{Config, DatabaseConfig};
use crate::delivery::Worker;
use crate::domain::Permission;
use crate::domain::retry::{format_duration, parse_duration};
use crate::schema::TokenKeys;
use crate::tools::bridge::SlackArgs;
use crate::tools::catch_up::CatchUpOptions;
use crate::tools::hook::HookTest;
use crate::tools::listen::{ApprovalAnswer, ListenOptions, parse_reason};
use crate::tools::receive::{self, Check};
use crate::{signing, store};

/// Herald: webhook notifications for CI, configured through GraphQL, wire-compatible with Cirrus CI.
#[derive(Parser, Debug)]
#[command(name = "herald", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure throughput, latency and memory end to end, on fresh databases or a running server.
    Bench(Box<crate::tools::bench::BenchArgs>),
    /// Run the API, the web console and the delivery worker.
    Serve {
        #[command(flatten)]
        config: Box<Config>,
        /// Run the API only; deliveries are left to `herald worker` processes.
        #[arg(long)]
        no_worker: bool,
    },
    /// Run the delivery worker only (scale out: several against one PostgreSQL).
    Worker {
        #[command(flatten)]
        config: Box<Config>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Print the GraphQL SDL.
    Schema,
    /// Manage organizations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// A local receiver: print each delivery, check its signatures, answer 200 (400 when a
    /// secret is given and the delivery is not signed with it). With --approve, --reject or
    /// --hold it also plays an approval hook.
    #[command(group(ArgGroup::new("approval").args(["approve", "reject", "hold"])))]
    Listen {
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The endpoint's secret: check both signature schemes and refuse bad ones with 400.
        #[arg(long)]
        secret: Option<String>,
        /// The HTTP status to answer accepted deliveries with (try 503 to watch Herald retry).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
        /// Print one JSON object per delivery instead of readable text.
        #[arg(long)]
        json: bool,
        /// How far a webhook-timestamp may be from now; 0s accepts any.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        tolerance: Duration,
        /// Answer approval calls (X-Cirrus-Event: approval) 200 with
        /// {"approved": true, "work_id": <a new UUID>}.
        #[arg(long)]
        approve: bool,
        /// Answer approval calls 200 with {"approved": false, "reason": REASON}.
        #[arg(long, value_name = "REASON", value_parser = parse_reason)]
        reject: Option<String>,
        /// Answer approval calls 200 with {"hold": true, "work_id": <a new UUID>}.
        #[arg(long)]
        hold: bool,
        /// Herald's URL: fetch the events X-Herald-Sequence says were missed (a number
        /// skipped) from its webhookEvents query, and print each event once (needs --secret:
        /// only signed deliveries count).
        #[arg(long, value_name = "URL", requires_all = ["token", "endpoint", "secret"], value_parser = parse_graphql_url)]
        catch_up: Option<url::Url>,
        /// A READ token of the endpoint's organization, for --catch-up.
        #[arg(
            long,
            env = "HERALD_TOKEN",
            hide_env_values = true,
            requires = "catch_up"
        )]
        token: Option<String>,
        /// The endpoint whose events --catch-up fetches.
        #[arg(long, value_name = "ID", requires = "catch_up")]
        endpoint: Option<String>,
        /// Keep the sequence number up to which every event was seen in FILE, and at start
        /// fetch every event after it (without it, --catch-up starts from the first).
        #[arg(long, value_name = "FILE", requires = "catch_up")]
        state: Option<std::path::PathBuf>,
    },
    /// Approval hooks.
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
    /// Check a body (stdin or --file) against an X-Cirrus-Signature, or against Standard
    /// Webhooks headers: exit 0 valid, 1 invalid.
    #[command(group(ArgGroup::new("scheme").required(true).args(["signature", "webhook_signature"])))]
    Verify {
        /// The endpoint's secret.
        #[arg(long)]
        secret: String,
        /// The X-Cirrus-Signature header's value (hex).
        #[arg(long)]
        signature: Option<String>,
        /// The webhook-id header's value (Standard Webhooks).
        #[arg(long, requires = "webhook_signature")]
        webhook_id: Option<String>,
        /// The webhook-timestamp header's value, seconds since the epoch.
        #[arg(long, requires = "webhook_signature")]
        webhook_timestamp: Option<i64>,
        /// The webhook-signature header's value (`v1,<base64>`, several space-separated).
        #[arg(long, requires_all = ["webhook_id", "webhook_timestamp"])]
        webhook_signature: Option<String>,
        /// How far webhook-timestamp may be from now; 0s accepts any.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        tolerance: Duration,
        /// Read the body from this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Forward Herald's (or Cirrus CI's) deliveries somewhere else.
    Bridge {
        #[command(subcommand)]
        command: BridgeCommand,
    },
    /// Start Herald on a temporary database with a receiver, play a build through it, print
    /// each delivery, and keep serving until Ctrl-C.
    Demo {
        /// HTTP address of the demo's API (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
pub enum BridgeCommand {
    /// Verify deliveries and show them in Slack: a message per event to an incoming webhook
    /// (--slack-url), or, as a Slack app (--bot-token, --channel), one message per build edited
    /// in place, with one reply per task in its thread. Give exactly one of --slack-url and
    /// --bot-token.
    Slack(Box<SlackArgs>),
}

#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// Send an approval hook a sample call, as Herald would (`"test": true` in its request), and
    /// print its HTTP status, its answer and the decision: exit 0 approved, 1 rejected, held or
    /// no valid answer.
    Test(HookTest),
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organization and print its uid.
    Create {
        /// A unique name.
        name: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a signed API token for an organization.
    Issue {
        /// The organization's name.
        #[arg(long)]
        org: String,
        /// READ, WRITE or ADMIN.
        #[arg(long, value_parser = parse_permission)]
        permission: Permission,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(i64).range(1..=10 * 365 * 24 * 3600))]
        ttl: i64,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Refuse every token of an organization issued until now; print from when tokens are
    /// accepted again.
    Revoke {
        /// The organization's name.
        #[arg(long)]
        org: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

/// Revokes the tokens of the organization named `name` and returns the time before which they
/// are refused. A server reading the same database refuses them within
/// [`crate::schema::auth::REVOCATION_STALENESS`].
async fn revoke(db: &sea_orm::DatabaseConnection, name: &str) -> anyhow::Result<i64> {
    let internal = |err: crate::Error| anyhow::anyhow!("{err}");
    let Some(found) = store::orgs::find_by_name(db, name)
        .await
        .map_err(internal)?
    else {
        bail!("no organization named {name:?} exists");
    };
    let tx = store::begin_write(db).await.map_err(internal)?;
    let before = crate::schema::auth::revocation_time(crate::now_ms());
    let Some(before) = store::orgs::revoke_tokens(&tx, found.id, before)
        .await
        .map_err(internal)?
    else {
        bail!("no organization named {name:?} exists");
    };
    tx.commit().await.context("committing the revocation")?;
    // Tokens issued before that time are refused, and `iat` counts whole seconds: wait for it,
    // so that `herald token issue` run right after this gives a token that works.
    let wait = before - crate::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    Ok(before)
}

fn parse_permission(text: &str) -> Result<Permission, String> {
    match Permission::parse(&text.to_ascii_uppercase()) {
        Some(Permission::None) | None => Err("expected READ, WRITE or ADMIN".into()),
        Some(permission) => Ok(permission),
    }
}

/// Runs a parsed command; the error is printed by `main` as one sentence.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, no_worker } => {
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            let role = if no_worker { Role::ApiOnly } else { Role::All };
            let app = App::build(*config, listener, role).await?;
            tracing::info!(address = %app.local_addr()?, ?role, "Herald is serving");
            let shutdown = CancellationToken::new();
            crate::app::cancel_on_signal(shutdown.clone());
            app.run(shutdown).await
        }
        Command::Worker { config } => {
            let state = AppState::new(*config).await?;
            let shutdown = CancellationToken::new();
            crate::app::cancel_on_signal(shutdown.clone());
            // On the runtime's threads, not the one that waits for it: each wake of the
            // worker's loop would otherwise cross to a thread of its own.
            tokio::spawn(Worker::new(state.worker()).run(shutdown))
                .await
                .context("the delivery worker stopped unexpectedly")?;
            Ok(())
        }
        Command::Migrate { database } => {
            store::connect(&database.database_url).await?;
            eprintln!("Migrations are applied.");
            Ok(())
        }
        Command::Schema => {
            print!("{}", crate::api::sdl());
            Ok(())
        }
        Command::Org {
            command: OrgCommand::Create { name, database },
        } => {
            let db = store::connect(&database.database_url).await?;
            let org = store::orgs::create(&db, &name)
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            println!("{}", org.id);
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    org,
                    permission,
                    ttl,
                    database,
                },
        } => {
            let db = store::connect(&database.database_url).await?;
            let Some(found) = store::orgs::find_by_name(&db, &org)
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?
            else {
                bail!("no organization named {org:?} exists");
            };
            // The token key may be sealed: HERALD_ENCRYPTION_KEY opens it, as for `serve`.
            let keys = TokenKeys::new(&crate::app::token_secret(&db).await?);
            let token = keys
                .issue(
                    &found.id.to_string(),
                    &format!("cli:{}", found.name),
                    permission,
                    ttl,
                )
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            println!("{token}");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { org, database },
        } => {
            let db = store::connect(&database.database_url).await?;
            let before = revoke(&db, &org).await?;
            let at = std::time::UNIX_EPOCH + Duration::from_millis(before.max(0) as u64);
            println!(
                "Tokens of {org:?} issued before {} ({before} ms since the epoch) are refused.",
                httpdate::fmt_http_date(at)
            );
            Ok(())
        }
        Command::Listen {
            listen,
            secret,
            status,
            json,
            tolerance,
            approve,
            reject,
            hold,
            catch_up,
            token,
            endpoint,
            state,
        } => {
            let status = StatusCode::from_u16(status).context("reading --status")?;
            let options = ListenOptions {
                secret,
                status,
                json,
                tolerance,
            };
            let approval = match (approve, reject, hold) {
                (true, ..) => Some(ApprovalAnswer::Approve),
                (_, Some(reason), _) => Some(ApprovalAnswer::Reject { reason }),
                (.., true) => Some(ApprovalAnswer::Hold),
                _ => None,
            };
            let catch_up =
                catch_up
                    .zip(token)
                    .zip(endpoint)
                    .map(|((graphql, token), endpoint_id)| CatchUpOptions {
                        graphql,
                        token,
                        endpoint_id,
                        state,
                    });
            crate::tools::listen::run(listen, options, approval, catch_up).await
        }
        Command::Hook {
            command: HookCommand::Test(test),
        } => {
            if !crate::tools::hook::test(test).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench(args) => {
            // Options that cannot run together are bad usage, like those clap refuses itself.
            if let Err(err) = args.check() {
                clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{err}\n"))
                    .exit();
            }
            crate::tools::bench::run(*args).await
        }
        Command::Verify {
            secret,
            signature,
            webhook_id,
            webhook_timestamp,
            webhook_signature,
            tolerance,
            file,
        } => {
            let body = match file {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => {
                    let mut body = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut body)
                        .context("reading the body from stdin")?;
                    body
                }
            };
            let check = match (signature, webhook_id, webhook_timestamp, webhook_signature) {
                (Some(signature), ..) => match signing::verify_cirrus(&secret, &body, &signature) {
                    true => Check::Valid,
                    false => Check::Invalid,
                },
                (None, Some(id), Some(timestamp), Some(signature)) => receive::check_standard(
                    &secret,
                    &id,
                    timestamp,
                    &body,
                    &signature,
                    tolerance,
                    receive::now_secs(),
                ),
                _ => bail!(
                    "give --signature, or --webhook-id, --webhook-timestamp and --webhook-signature"
                ),
            };
            match check {
                Check::Valid => {
                    println!("valid");
                    Ok(())
                }
                Check::Stale => {
                    println!("invalid");
                    eprintln!(
                        "herald: the signature matches, but webhook-timestamp is further than {} from now.",
                        format_duration(tolerance)
                    );
                    std::process::exit(1);
                }
                _ => {
                    println!("invalid");
                    std::process::exit(1);
                }
            }
        }
        Command::Bridge {
            command: BridgeCommand::Slack(args),
        } => {
            // Options that cannot go together are bad usage, like those clap refuses itself.
            let (listen, options) = args.options().unwrap_or_else(|why| {
                clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{why}\n"))
                    .exit()
            });
            crate::tools::bridge::run(listen, options).await
        }
        Command::Demo { listen } => crate::tools::demo::run(listen).await,
    }
}

/// `--catch-up URL`: Herald's base URL or its `/graphql`; the GraphQL URL.
fn parse_graphql_url(text: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(text.trim()).map_err(|_| "not a URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("not an http or https URL".into());
    }
    if !url.path().ends_with("/graphql") {
        let path = format!("{}/graphql", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}
