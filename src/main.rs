//! The `herald` binary: parse the command line, run the library.

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every command's HTTPS and PostgreSQL TLS use ring, whichever command builds a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = herald::cli::Cli::parse();
    if let Err(err) = herald::cli::run(cli).await {
        let causes: Vec<String> = err.chain().map(ToString::to_string).collect();
        eprintln!("herald: {}.", causes.join(": ").trim_end_matches('.'));
        std::process::exit(1);
    }
}
