//! The command line (CONTRACT §1). Exit codes: 0 success, 1 runtime failure, 2 bad usage.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppState, Role};
use crate::config::{Config, DatabaseConfig};
use crate::delivery::Worker;
use crate::domain::Permission;
use crate::graphql::TokenKeys;
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
    /// Check a body (stdin or --file) against an X-Cirrus-Signature: exit 0 valid, 1 invalid.
    Verify {
        /// The endpoint's secret.
        #[arg(long)]
        secret: String,
        /// The X-Cirrus-Signature header's value (hex).
        #[arg(long)]
        signature: String,
        /// Read the body from this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
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
            Worker::new(state).run(shutdown).await;
            Ok(())
        }
        Command::Migrate { database } => {
            store::connect(&database.database_url).await?;
            eprintln!("Migrations are applied.");
            Ok(())
        }
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
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
        Command::Verify {
            secret,
            signature,
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
            if signing::verify_cirrus(&secret, &body, &signature) {
                println!("valid");
                Ok(())
            } else {
                println!("invalid");
                std::process::exit(1);
            }
        }
    }
}
