//! `herald hook test`: sends an approval hook a sample call, built, signed and sent as Herald
//! sends its calls (`X-Cirrus-Event: approval`), and prints what came back and what Herald
//! would decide: one line each for the HTTP status, the answer and the decision.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::delivery::approval::{Question, read_answer, sample_request};
use crate::delivery::client::{Destination, Outgoing, Sender, Signing};
use crate::delivery::guard::{SystemLookup, TargetPolicy};
use crate::domain::retry::parse_duration;
use crate::domain::{ApprovalDecision, ApprovalPoint, EndpointUrl, SignatureStyle};

/// The organization a sample call comes from.
const SAMPLE_ORG: &str = "herald-hook-test";
/// The longest answer printed; the rest is cut.
const SHOWN_ANSWER: usize = 2000;

/// What to send where: `herald hook test`'s arguments.
#[derive(clap::Args)]
pub struct HookTest {
    /// The hook's URL (private addresses included).
    #[arg(value_parser = parse_url)]
    pub url: EndpointUrl,
    /// What the call asks about: BUILD_CREATE or TASK_CREATE.
    #[arg(long, value_parser = parse_point)]
    pub point: ApprovalPoint,
    /// The hook's secret, to sign the call with.
    #[arg(long, env = "HERALD_HOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// How the call is signed: CIRRUS, GITHUB, JOBSERV, GITLAB, CODEUP or NONE.
    #[arg(long, default_value = "CIRRUS", value_parser = parse_style)]
    pub signature_style: SignatureStyle,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Never shows the secret.
impl std::fmt::Debug for HookTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookTest")
            .field("url", &self.url.masked())
            .field("point", &self.point)
            .field("secret", &self.secret.as_ref().map(|_| "********"))
            .field("signature_style", &self.signature_style)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn parse_point(text: &str) -> Result<ApprovalPoint, String> {
    ApprovalPoint::parse(&text.trim().to_ascii_uppercase())
        .ok_or_else(|| "expected BUILD_CREATE or TASK_CREATE".into())
}

fn parse_style(text: &str) -> Result<SignatureStyle, String> {
    SignatureStyle::parse(&text.trim().to_ascii_uppercase()).ok_or_else(|| {
        let names: Vec<&str> = SignatureStyle::ALL
            .iter()
            .map(|style| style.as_str())
            .collect();
        format!("expected {}", names.join(", "))
    })
}

fn parse_url(text: &str) -> Result<EndpointUrl, String> {
    EndpointUrl::parse(text).map_err(|err| {
        err.to_string()
            .replace("The webhook URL", "The URL")
            .trim_end_matches('.')
            .to_owned()
    })
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        timeout if timeout.is_zero() => Err("the timeout must be more than 0s".into()),
        timeout => Ok(timeout),
    }
}

/// The body of a sample call at `point`.
pub fn sample_body(point: ApprovalPoint) -> String {
    Question {
        org_id: 0,
        org_name: SAMPLE_ORG,
        point,
        actor: "cli:herald-hook-test",
        request: sample_request(point, SAMPLE_ORG),
    }
    .body(None)
}

/// An answer's body on one line: compact JSON when it is JSON, else the text with its line
/// breaks and other control characters escaped; cut after [`SHOWN_ANSWER`] characters.
fn one_line(body: &str) -> String {
    if body.is_empty() {
        return "(empty)".into();
    }
    let text = match serde_json::from_str::<Json>(body) {
        Ok(json) => json.to_string(),
        Err(_) => body
            .trim_end()
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect(),
    };
    match text.char_indices().nth(SHOWN_ANSWER) {
        Some((at, _)) => format!("{}… ({} bytes in all)", &text[..at], body.len()),
        None => text,
    }
}

/// Sends the sample call and prints its status, answer and decision; true when the hook
/// approved. An unreachable hook is no answer (false), not an error.
pub async fn test(test: HookTest) -> anyhow::Result<bool> {
    // The tool talks to whatever URL it is given, as `herald listen` users expect: a hook on
    // this machine or the local network included.
    let policy = TargetPolicy {
        allow_private: true,
        allowed: Vec::new(),
    };
    let sender = Sender::new(test.timeout, policy, Arc::new(SystemLookup))?;
    let signing = Signing::new(test.signature_style, test.secret.as_deref(), None, &[]);
    let destination = Destination::new(&test.url, false);
    let id = uuid::Uuid::now_v7().to_string();
    let answer = sender
        .send(Outgoing {
            to: &destination,
            event: "approval",
            delivery_id: &id,
            event_timestamp: crate::now_ms(),
            signing: &signing,
            work_id: None,
            sequence: None,
            body: sample_body(test.point),
        })
        .await;
    match answer.status {
        Some(status) => println!("status: {status}"),
        None => println!("status: none"),
    }
    println!("answer: {}", one_line(&answer.body));
    let read = match answer.error {
        Some(error) => Err(error),
        None => read_answer(answer.status, &answer.body),
    };
    match read {
        Ok(read) => {
            let decision = read.decision();
            let mut line = format!("decision: {decision}");
            if let Some(work_id) = &read.work_id {
                line.push_str(&format!(" work_id={work_id}"));
            }
            if let Some(reason) = &read.reason {
                line.push_str(&format!(" reason={reason:?}"));
            }
            println!("{line}");
            Ok(decision == ApprovalDecision::Approved)
        }
        Err(error) => {
            println!("no valid answer: {error}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_body_has_the_shape_of_a_real_call() {
        let body: Json = serde_json::from_str(&sample_body(ApprovalPoint::TaskCreate)).unwrap();
        assert_eq!(body["hook"], "pre");
        assert_eq!(body["point"], "TASK_CREATE");
        assert_eq!(body["organization"]["name"], SAMPLE_ORG);
        assert_eq!(body["request"]["repository"]["owner"], SAMPLE_ORG);
        assert_eq!(body["request"]["test"], true);
    }

    #[test]
    fn answers_are_shown_on_one_line() {
        assert_eq!(one_line(""), "(empty)");
        assert_eq!(
            one_line("{\n  \"approved\": true\n}"),
            r#"{"approved":true}"#
        );
        assert_eq!(one_line("isn't\ngood"), "isn't\\ngood");
        assert!(one_line(&"x".repeat(5000)).ends_with("(5000 bytes in all)"));
    }
}
