//! The two Slack Web API methods the app mode calls, `chat.postMessage` and `chat.update`, with
//! a bot token, and what their answers mean to the bridge.
//!
//! The token travels only in the `Authorization` header (marked sensitive); neither it nor the
//! request URL appears in an error.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, header};
use serde_json::{Value as Json, json};

use crate::domain::retry::parse_retry_after;

/// A Slack bot token (`xoxb-…`). Its `Debug` prints `***`.
#[derive(Clone)]
pub struct BotToken(String);

impl BotToken {
    /// A token that can travel in an HTTP header; the error says why not, without the value.
    pub fn new(token: &str) -> Result<Self, &'static str> {
        let token = token.trim();
        if token.is_empty() {
            return Err("is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("holds spaces or characters a token cannot have");
        }
        Ok(Self(token.to_owned()))
    }
}

impl std::fmt::Debug for BotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotToken(***)")
    }
}

/// A message Slack holds: its channel's id, as Slack answers it, and its `ts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

/// One call: post a message (in a thread when `thread_ts` is set), or edit one.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Post {
        channel: String,
        thread_ts: Option<String>,
        /// `text` and, optionally, `blocks`.
        message: Json,
    },
    Update {
        channel: String,
        ts: String,
        message: Json,
    },
}

/// Why a call did not take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429 or `ratelimited`: Slack takes nothing for this long.
    RateLimited(Duration),
    /// A 5xx answer or none at all (the detail, without the URL): worth trying again later.
    Unavailable(String),
    /// `message_not_found`: the message was deleted.
    MessageNotFound,
    /// Any other refusal, as one sentence: trying again will not help.
    Refused(String),
}

/// The Web API at a base URL (`https://slack.com/api`) with a bot token.
pub struct SlackApi {
    client: reqwest::Client,
    base: String,
    authorization: HeaderValue,
}

impl SlackApi {
    pub fn new(client: reqwest::Client, base: &url::Url, token: &BotToken) -> anyhow::Result<Self> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.0))
            .map_err(|_| anyhow::anyhow!("the bot token cannot travel in an HTTP header"))?;
        authorization.set_sensitive(true);
        Ok(Self {
            client,
            base: base.as_str().trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// Makes `call`; the message as Slack now holds it.
    pub async fn send(&self, call: &Call) -> Result<Posted, Failure> {
        let (method, channel, body) = match call {
            Call::Post {
                channel,
                thread_ts,
                message,
            } => {
                let mut body = json!({ "channel": channel });
                if let Some(ts) = thread_ts {
                    body["thread_ts"] = json!(ts);
                }
                ("chat.postMessage", channel, with_message(body, message))
            }
            Call::Update {
                channel,
                ts,
                message,
            } => {
                let body = json!({ "channel": channel, "ts": ts });
                ("chat.update", channel, with_message(body, message))
            }
        };
        let sent = self
            .client
            .post(format!("{}/{method}", self.base))
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return Err(Failure::Unavailable(err.without_url().to_string())),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let answer: Option<Json> = response
            .text()
            .await
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        read_answer(status.as_u16(), retry_after, answer.as_ref(), channel)
    }
}

/// `body` with the message's `text` and `blocks`.
fn with_message(mut body: Json, message: &Json) -> Json {
    for name in ["text", "blocks"] {
        if let Some(value) = message.get(name) {
            body[name] = value.clone();
        }
    }
    body
}

/// What an answer means: its HTTP status, its `Retry-After`, its JSON body (if it had one), for
/// a call to `channel`.
pub fn read_answer(
    status: u16,
    retry_after: Option<Duration>,
    answer: Option<&Json>,
    channel: &str,
) -> Result<Posted, Failure> {
    let error = answer.and_then(|answer| answer["error"].as_str());
    match (status, error) {
        (429, _) | (_, Some("ratelimited")) => {
            // Slack always says how long; a second is its own pace, should it not.
            Err(Failure::RateLimited(
                retry_after.unwrap_or(Duration::from_secs(1)),
            ))
        }
        (500..=599, _) => Err(Failure::Unavailable(format!("HTTP {status}"))),
        (200..=299, _) => {
            let Some(answer) = answer else {
                return Err(Failure::Refused(
                    "Slack's Web API answered with something other than JSON; check --slack-api."
                        .into(),
                ));
            };
            if answer["ok"] == true {
                // Slack answers the channel's id, which chat.update needs, even when the call
                // named the channel (`#ci`).
                let posted_in = answer["channel"].as_str().unwrap_or(channel);
                return match answer["ts"].as_str() {
                    Some(ts) => Ok(Posted {
                        channel: posted_in.to_owned(),
                        ts: ts.to_owned(),
                    }),
                    None => Err(Failure::Refused(
                        "Slack's answer carried no message ts.".into(),
                    )),
                };
            }
            match error {
                Some("message_not_found") => Err(Failure::MessageNotFound),
                error => Err(Failure::Refused(refusal(
                    error.unwrap_or("unknown"),
                    channel,
                ))),
            }
        }
        _ => Err(Failure::Refused(format!(
            "Slack's Web API answered HTTP {status}; check --slack-api."
        ))),
    }
}

/// One sentence for a Slack `error` code from a call to `channel`.
pub fn refusal(error: &str, channel: &str) -> String {
    // The code comes from the network: only a plain code is repeated.
    let error = if !error.is_empty()
        && error.len() <= 64
        && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        error
    } else {
        "unknown"
    };
    match error {
        "not_authed" | "invalid_auth" | "account_inactive" | "token_revoked"
        | "token_expired" | "not_allowed_token_type" | "no_permission" => {
            format!("Slack refused the bot token ({error}); check SLACK_BOT_TOKEN.")
        }
        "missing_scope" => {
            "The bot token lacks the chat:write scope (missing_scope); add it and reinstall the app."
                .into()
        }
        "channel_not_found" => {
            format!("Slack knows no channel {channel} that the bot can see (channel_not_found).")
        }
        "not_in_channel" => {
            format!("The bot is not in channel {channel}; invite it there (not_in_channel).")
        }
        "is_archived" => format!("Channel {channel} is archived (is_archived)."),
        "cant_update_message" | "edit_window_closed" => {
            format!("Slack does not let the bot edit its message ({error}).")
        }
        _ => format!("Slack refused the message ({error})."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        let ok = json!({ "ok": true, "channel": "C0123", "ts": "1700000000.000100" });
        assert_eq!(
            read_answer(200, None, Some(&ok), "#ci"),
            Ok(Posted {
                channel: "C0123".into(),
                ts: "1700000000.000100".into()
            })
        );
        let limited = json!({ "ok": false, "error": "ratelimited" });
        assert_eq!(
            read_answer(429, Some(Duration::from_secs(3)), Some(&limited), "#ci"),
            Err(Failure::RateLimited(Duration::from_secs(3)))
        );
        assert_eq!(
            read_answer(200, None, Some(&limited), "#ci"),
            Err(Failure::RateLimited(Duration::from_secs(1)))
        );
        let gone = json!({ "ok": false, "error": "message_not_found" });
        assert_eq!(
            read_answer(200, None, Some(&gone), "#ci"),
            Err(Failure::MessageNotFound)
        );
        assert!(matches!(
            read_answer(503, None, None, "#ci"),
            Err(Failure::Unavailable(_))
        ));
        let auth = json!({ "ok": false, "error": "invalid_auth" });
        assert_eq!(
            read_answer(200, None, Some(&auth), "#ci"),
            Err(Failure::Refused(
                "Slack refused the bot token (invalid_auth); check SLACK_BOT_TOKEN.".into()
            ))
        );
        assert!(matches!(
            read_answer(404, None, None, "#ci"),
            Err(Failure::Refused(_))
        ));
    }

    #[test]
    fn refusals_are_one_sentence_and_repeat_only_plain_codes() {
        assert_eq!(
            refusal("not_in_channel", "#ci"),
            "The bot is not in channel #ci; invite it there (not_in_channel)."
        );
        assert_eq!(
            refusal("<script>xoxb-secret", "#ci"),
            "Slack refused the message (unknown)."
        );
    }

    #[test]
    fn a_token_is_never_shown() {
        let token = BotToken::new("xoxb-123-secret").unwrap();
        assert_eq!(format!("{token:?}"), "BotToken(***)");
        assert!(BotToken::new("xoxb 123").is_err());
        assert!(BotToken::new("  ").is_err());
    }
}
