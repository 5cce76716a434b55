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
use crate::config::{Config, DatabaseConfig, parse_public_url};
use crate::delivery::Worker;
use crate::domain::Permission;
use crate::domain::retry::{format_duration, parse_duration};
use crate::domain::status::is_status_name;
use crate::schema::TokenKeys;
use crate::tools::bridge::{
    AppOptions, BotToken, BotTokenParser, BridgeOptions, Destination, SlackUrl, SlackUrlParser,
};
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
    Slack {
        /// The address to receive deliveries on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The endpoint's secret; deliveries not signed with it are refused with 400.
        #[arg(long, env = "HERALD_BRIDGE_SECRET", hide_env_values = true)]
        secret: String,
        /// The Slack incoming-webhook URL (it holds Slack's token: prefer the variable).
        #[arg(long, env = "SLACK_WEBHOOK_URL", hide_env_values = true, value_parser = SlackUrlParser)]
        slack_url: Option<SlackUrl>,
        /// A Slack app's bot token, `xoxb-…`, with the chat:write scope (prefer the variable).
        #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true, value_parser = BotTokenParser)]
        bot_token: Option<BotToken>,
        /// The channel the Slack app posts to: its id (C0123…) or #name.
        #[arg(long, value_parser = parse_channel)]
        channel: Option<String>,
        /// Slack's Web API, for the Slack app.
        #[arg(long, default_value = "https://slack.com/api", value_parser = parse_slack_api)]
        slack_api: url::Url,
        /// The pause between two calls of the Slack app (Slack allows about one message a
        /// second per channel); states that arrive meanwhile are shown together.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        channel_interval: Duration,
        /// Forward only events reaching these statuses (comma-separated, e.g. FAILED,ERRORED);
        /// incoming webhook only, since the Slack app shows each build whole.
        #[arg(long, value_delimiter = ',', value_parser = parse_status)]
        only_status: Vec<String>,
        /// Link builds and tasks to `<URL>/build/<id>` and `<URL>/task/<id>`
        /// (`https://cirrus-ci.com` for Cirrus CI).
        #[arg(long, env = "HERALD_PUBLIC_URL", value_parser = parse_public_url)]
        public_url: Option<String>,
        /// How far a webhook-timestamp may be from now; 0s accepts any.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        tolerance: Duration,
        /// How long a delivery may wait for a busy Slack before the bridge answers 503 so the
        /// sender retries.
        #[arg(long, default_value = "8s", value_parser = parse_duration)]
        max_wait: Duration,
        /// Refuse (400) deliveries without a valid Standard Webhooks signature whose
        /// webhook-timestamp is within --tolerance of now, so that a captured delivery cannot be
        /// replayed later. Cirrus CI sends only X-Cirrus-Signature: leave this off for it.
        #[arg(long)]
        require_timestamp: bool,
        /// Reach Slack through the proxy named by HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
        /// NO_PROXY; without this flag they are ignored and the bridge connects directly.
        #[arg(long)]
        use_proxy_env: bool,
    },
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

fn parse_status(text: &str) -> Result<String, String> {
    let name = text.trim().to_ascii_uppercase();
    if is_status_name(&name) {
        Ok(name)
    } else {
        Err(format!("{text:?} is not a build or task status"))
    }
}

/// Where `herald bridge slack` shows deliveries: exactly one of an incoming webhook and a Slack
/// app (which needs a channel); the error is one sentence naming the flags and variables.
fn bridge_destination(
    slack_url: Option<SlackUrl>,
    bot_token: Option<BotToken>,
    channel: Option<String>,
    app: impl FnOnce(BotToken, String) -> AppOptions,
) -> Result<Destination, &'static str> {
    match (slack_url, bot_token, channel) {
        (Some(url), None, None) => Ok(Destination::Webhook(url.0)),
        (None, Some(token), Some(channel)) => Ok(Destination::App(app(token, channel))),
        (Some(_), Some(_), _) => Err(
            "give either --slack-url (SLACK_WEBHOOK_URL) for an incoming webhook or --bot-token (SLACK_BOT_TOKEN) for a Slack app, not both",
        ),
        (None, None, _) => Err(
            "give --slack-url (SLACK_WEBHOOK_URL) for an incoming webhook, or --bot-token (SLACK_BOT_TOKEN) with --channel for a Slack app",
        ),
        (None, Some(_), None) => {
            Err("the Slack app needs --channel: the id (C0123…) or #name of the channel to post to")
        }
        (Some(_), None, Some(_)) => {
            Err("--channel is for the Slack app: give --bot-token (SLACK_BOT_TOKEN) with it")
        }
    }
}

fn parse_channel(text: &str) -> Result<String, String> {
    let channel = text.trim();
    if channel.is_empty() || channel.chars().any(char::is_whitespace) {
        return Err("expected a channel id (C0123…) or #name".into());
    }
    Ok(channel.to_owned())
}

fn parse_slack_api(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ => Err("expected an http or https URL such as https://slack.com/api".into()),
    }
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
            crate::tools::listen::run(listen, options, approval).await
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
            command:
                BridgeCommand::Slack {
                    listen,
                    secret,
                    slack_url,
                    bot_token,
                    channel,
                    slack_api,
                    channel_interval,
                    only_status,
                    public_url,
                    tolerance,
                    max_wait,
                    require_timestamp,
                    use_proxy_env,
                },
        } => {
            if require_timestamp && tolerance.is_zero() {
                clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--require-timestamp needs a window: give --tolerance more than 0s\n",
                )
                .exit();
            }
            let app = |token, channel| AppOptions {
                token,
                channel,
                api: slack_api,
                channel_interval,
            };
            let destination = bridge_destination(slack_url, bot_token, channel, app)
                .and_then(|destination| match destination {
                    Destination::App(_) if !only_status.is_empty() => Err(
                        "--only-status is for the incoming webhook; the Slack app shows each build whole",
                    ),
                    destination => Ok(destination),
                })
                .unwrap_or_else(|why| {
                    clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{why}\n"))
                        .exit()
                });
            let options = BridgeOptions {
                secret,
                destination,
                only_status,
                public_url,
                tolerance,
                max_wait,
                require_timestamp,
                use_proxy_env,
            };
            crate::tools::bridge::run(listen, options).await
        }
        Command::Demo { listen } => crate::tools::demo::run(listen).await,
    }
}
