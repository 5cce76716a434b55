//! `herald bridge slack`'s arguments, and the options they make. Slack's secrets (the webhook
//! URL, the bot token) are never echoed: not by `Debug`, not in a parse error.

use std::net::SocketAddr;
use std::time::Duration;

use super::{AppOptions, BotToken, BridgeOptions, Destination};
use crate::config::parse_public_url;
use crate::domain::retry::parse_duration;
use crate::domain::status::is_status_name;

/// `herald bridge slack`'s arguments. Its `Debug` masks the secrets.
#[derive(clap::Args)]
pub struct SlackArgs {
    /// The address to receive deliveries on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The endpoint's secret; deliveries not signed with it are refused with 400.
    #[arg(long, env = "HERALD_BRIDGE_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The Slack incoming-webhook URL (it holds Slack's token: prefer the variable).
    #[arg(long, env = "SLACK_WEBHOOK_URL", hide_env_values = true, value_parser = SlackUrlParser)]
    pub slack_url: Option<SlackUrl>,
    /// A Slack app's bot token, `xoxb-…`, with the chat:write scope (prefer the variable).
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true, value_parser = BotTokenParser)]
    pub bot_token: Option<BotToken>,
    /// The channel the Slack app posts to: its id (C0123…) or #name.
    #[arg(long, value_parser = parse_channel)]
    pub channel: Option<String>,
    /// Slack's Web API, for the Slack app.
    #[arg(long, default_value = "https://slack.com/api", value_parser = parse_slack_api)]
    pub slack_api: url::Url,
    /// The pause between two calls of the Slack app (Slack allows about one message a second
    /// per channel); states that arrive meanwhile are shown together.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub channel_interval: Duration,
    /// Forward only events reaching these statuses (comma-separated, e.g. FAILED,ERRORED);
    /// incoming webhook only, since the Slack app shows each build whole.
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    pub only_status: Vec<String>,
    /// Link builds and tasks to `<URL>/build/<id>` and `<URL>/task/<id>`
    /// (`https://cirrus-ci.com` for Cirrus CI).
    #[arg(long, env = "HERALD_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// How far a webhook-timestamp may be from now; 0s accepts any.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub tolerance: Duration,
    /// How long a delivery may wait for a busy Slack before the bridge answers 503 so the
    /// sender retries.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Refuse (400) deliveries without a valid Standard Webhooks signature whose
    /// webhook-timestamp is within --tolerance of now, so that a captured delivery cannot be
    /// replayed later. Cirrus CI sends only X-Cirrus-Signature: leave this off for it.
    #[arg(long)]
    pub require_timestamp: bool,
    /// Reach Slack through the proxy named by HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
    /// NO_PROXY; without this flag they are ignored and the bridge connects directly.
    #[arg(long)]
    pub use_proxy_env: bool,
}

impl std::fmt::Debug for SlackArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackArgs")
            .field("listen", &self.listen)
            .field("secret", &"***")
            .field("slack_url", &self.slack_url)
            .field("bot_token", &self.bot_token)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl SlackArgs {
    /// The address and the options; the error is one sentence of bad usage (exactly one of
    /// an incoming webhook and a Slack app, which needs a channel), naming flags and variables.
    pub fn options(self) -> Result<(SocketAddr, BridgeOptions), &'static str> {
        if self.require_timestamp && self.tolerance.is_zero() {
            return Err("--require-timestamp needs a window: give --tolerance more than 0s");
        }
        let destination = match (self.slack_url, self.bot_token, self.channel) {
            (Some(url), None, None) => Destination::Webhook(url.0),
            (None, Some(_), Some(_)) if self.channel_interval >= self.max_wait => {
                return Err(
                    "--channel-interval must be shorter than --max-wait, or every delivery would wait past it",
                );
            }
            (None, Some(token), Some(channel)) if self.only_status.is_empty() => {
                Destination::App(AppOptions {
                    token,
                    channel,
                    api: self.slack_api,
                    channel_interval: self.channel_interval,
                })
            }
            (None, Some(_), Some(_)) => {
                return Err(
                    "--only-status is for the incoming webhook; the Slack app shows each build whole",
                );
            }
            (Some(_), Some(_), _) => {
                return Err(
                    "give either --slack-url (SLACK_WEBHOOK_URL) for an incoming webhook or --bot-token (SLACK_BOT_TOKEN) for a Slack app, not both",
                );
            }
            (None, None, _) => {
                return Err(
                    "give --slack-url (SLACK_WEBHOOK_URL) for an incoming webhook, or --bot-token (SLACK_BOT_TOKEN) with --channel for a Slack app",
                );
            }
            (None, Some(_), None) => {
                return Err(
                    "the Slack app needs --channel: the id (C0123…) or #name of the channel to post to",
                );
            }
            (Some(_), None, Some(_)) => {
                return Err(
                    "--channel is for the Slack app: give --bot-token (SLACK_BOT_TOKEN) with it",
                );
            }
        };
        let options = BridgeOptions {
            secret: self.secret,
            destination,
            only_status: self.only_status,
            public_url: self.public_url,
            tolerance: self.tolerance,
            max_wait: self.max_wait,
            require_timestamp: self.require_timestamp,
            use_proxy_env: self.use_proxy_env,
        };
        Ok((self.listen, options))
    }
}

/// Slack's incoming-webhook URL. Its path is Slack's token, so neither `Debug` nor a parse
/// error shows it.
#[derive(Clone)]
pub struct SlackUrl(pub url::Url);

impl std::fmt::Debug for SlackUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackUrl(***)")
    }
}

/// A refusal of a secret's value, which it does not show.
fn refuse(cmd: &clap::Command, name: &str, why: &str) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        format!("{name} {why}; its value is not shown, since it holds Slack's token\n"),
    )
    .with_cmd(cmd)
}

/// Parses `--slack-url` / `SLACK_WEBHOOK_URL`: an http or https URL with a host.
#[derive(Clone)]
pub struct SlackUrlParser;

impl clap::builder::TypedValueParser for SlackUrlParser {
    type Value = SlackUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SlackUrl, clap::Error> {
        let refuse = |why: &str| refuse(cmd, "SLACK_WEBHOOK_URL (or --slack-url)", why);
        let text = value.to_str().ok_or_else(|| refuse("is not UTF-8"))?;
        let url = url::Url::parse(text.trim()).map_err(|_| refuse("is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(refuse("is not an http or https URL"));
        }
        Ok(SlackUrl(url))
    }
}

/// Parses `--bot-token` / `SLACK_BOT_TOKEN`.
#[derive(Clone)]
pub struct BotTokenParser;

impl clap::builder::TypedValueParser for BotTokenParser {
    type Value = BotToken;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BotToken, clap::Error> {
        let refuse = |why: &str| refuse(cmd, "SLACK_BOT_TOKEN (or --bot-token)", why);
        let text = value.to_str().ok_or_else(|| refuse("is not UTF-8"))?;
        BotToken::new(text).map_err(refuse)
    }
}

fn parse_status(text: &str) -> Result<String, String> {
    let name = text.trim().to_ascii_uppercase();
    if is_status_name(&name) {
        Ok(name)
    } else {
        Err(format!("{text:?} is not a build or task status"))
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: SlackArgs,
    }

    fn options(args: &[&str]) -> Result<Destination, &'static str> {
        let mut argv = vec!["bridge", "--secret", "s"];
        argv.extend(args);
        let command = Command::try_parse_from(argv).unwrap();
        command
            .args
            .options()
            .map(|(_, options)| options.destination)
    }

    #[test]
    fn exactly_one_destination_and_the_app_needs_a_channel() {
        let url = "https://hooks.slack.com/services/T0/B0/X";
        assert!(matches!(
            options(&["--slack-url", url]),
            Ok(Destination::Webhook(_))
        ));
        let app = options(&["--bot-token", "xoxb-1", "--channel", "#ci"]);
        let Ok(Destination::App(app)) = app else {
            panic!("not the app mode");
        };
        assert_eq!(app.channel, "#ci");
        assert_eq!(app.api.as_str(), "https://slack.com/api");
        assert_eq!(app.channel_interval, Duration::from_secs(1));

        for (args, says) in [
            (vec![], "give --slack-url"),
            (
                vec!["--slack-url", url, "--bot-token", "xoxb-1"],
                "not both",
            ),
            (vec!["--bot-token", "xoxb-1"], "needs --channel"),
            (
                vec!["--slack-url", url, "--channel", "#ci"],
                "give --bot-token",
            ),
            (
                vec![
                    "--bot-token",
                    "x",
                    "--channel",
                    "C1",
                    "--only-status",
                    "FAILED",
                ],
                "--only-status is for the incoming webhook",
            ),
            (
                vec![
                    "--bot-token",
                    "x",
                    "--channel",
                    "C1",
                    "--channel-interval",
                    "8s",
                ],
                "shorter than --max-wait",
            ),
        ] {
            let refused = options(&args).err().unwrap_or_else(|| panic!("{args:?}"));
            assert!(refused.contains(says), "{args:?}: {refused}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let argv = ["bridge", "--secret", "S3CRET", "--bot-token", "xoxb-T0KEN"];
        let command = Command::try_parse_from(argv).unwrap();
        let shown = format!("{:?}", command.args);
        assert!(
            !shown.contains("S3CRET") && !shown.contains("T0KEN"),
            "{shown}"
        );
    }
}
