//! The receiving side, shared by `herald listen`, `herald verify` and `herald bridge`: check a
//! delivery's signatures (both schemes) and read its envelope, whether Herald or Cirrus CI sent
//! it, FLAT or DATA, with ids as strings or numbers.

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value as Json;

use crate::signing;
use crate::slack;

/// The default window a `webhook-timestamp` may be off by, as Standard Webhooks recommends.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// How one signature scheme fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Valid,
    Invalid,
    /// The signature may be right, but `webhook-timestamp` is outside the tolerance.
    Stale,
    /// The delivery carries no signature of this scheme.
    Absent,
    /// A signature came but there is no secret to check it with.
    Unchecked,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Stale => "stale",
            Self::Absent => "absent",
            Self::Unchecked => "unchecked",
        }
    }
}

/// The headers that carry a style's own signature (a hex HMAC-SHA256 of the body after a
/// prefix) or token (the secret itself), as Herald's signature styles send them; the first a
/// delivery carries is checked.
const STYLE_HEADERS: [(&str, &str, Option<&str>); 5] = [
    ("x-cirrus-signature", "X-Cirrus-Signature", Some("")),
    (
        "x-hub-signature-256",
        "X-Hub-Signature-256",
        Some("sha256="),
    ),
    ("x-jobserv-sig", "X-JobServ-Sig", Some("sha256:")),
    ("x-gitlab-token", "X-Gitlab-Token", None),
    ("x-codeup-token", "X-Codeup-Token", None),
];

/// The outcome of both schemes for one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signatures {
    /// The style's own header: `X-Cirrus-Signature`, or the one another style sends instead
    /// (see [`Signatures::style_header`]).
    pub cirrus: Check,
    /// The name of the header `cirrus` checked (`X-Cirrus-Signature` when none came).
    pub style_header: &'static str,
    /// `webhook-signature` (Standard Webhooks).
    pub standard: Check,
    secret_given: bool,
}

impl Signatures {
    /// An event fetched from Herald's API rather than received: it carries no signature.
    pub fn fetched() -> Self {
        Self {
            cirrus: Check::Absent,
            style_header: "X-Cirrus-Signature",
            standard: Check::Absent,
            secret_given: false,
        }
    }

    /// Checks the signatures a delivery carries against `secret`; `now` is seconds since the
    /// epoch, and a zero `tolerance` accepts any `webhook-timestamp`.
    pub fn check(
        headers: &HeaderMap,
        body: &[u8],
        secret: Option<&str>,
        tolerance: Duration,
        now: i64,
    ) -> Self {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let found = STYLE_HEADERS
            .iter()
            .find_map(|(name, shown, prefix)| Some((header(name)?, *shown, *prefix)));
        let style_header = found.map_or("X-Cirrus-Signature", |(_, shown, _)| shown);
        let cirrus = match (found, secret) {
            (None, _) => Check::Absent,
            (Some(_), None) => Check::Unchecked,
            (Some((value, _, prefix)), Some(secret)) => {
                let valid = match prefix {
                    Some(prefix) => value
                        .strip_prefix(prefix)
                        .is_some_and(|hex| signing::verify_cirrus(secret, body, hex)),
                    None => same_token(value, secret),
                };
                if valid { Check::Valid } else { Check::Invalid }
            }
        };
        let standard = match (header("webhook-signature"), secret) {
            (None, _) => Check::Absent,
            (Some(_), None) => Check::Unchecked,
            (Some(signature), Some(secret)) => {
                let id = header("webhook-id").unwrap_or_default();
                match header("webhook-timestamp").and_then(|ts| ts.trim().parse().ok()) {
                    None => Check::Invalid,
                    Some(timestamp) => {
                        check_standard(secret, id, timestamp, body, signature, tolerance, now)
                    }
                }
            }
        };
        Self {
            cirrus,
            style_header,
            standard,
            secret_given: secret.is_some(),
        }
    }

    /// Without a secret every delivery passes. With one, at least one scheme must be valid and
    /// none may be wrong: a forged header next to a genuine one is still a forgery.
    pub fn accepted(&self) -> bool {
        if !self.secret_given {
            return true;
        }
        let both = [self.cirrus, self.standard];
        both.contains(&Check::Valid)
            && !both
                .iter()
                .any(|check| matches!(check, Check::Invalid | Check::Stale))
    }
}

/// Whether a token header holds the secret, compared in time that does not depend on where
/// they differ.
fn same_token(token: &str, secret: &str) -> bool {
    token.len() == secret.len()
        && token
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Checks a Standard Webhooks signature, its timestamp within `tolerance` of `now` (seconds;
/// a zero tolerance skips the timestamp check).
pub fn check_standard(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    signature: &str,
    tolerance: Duration,
    now: i64,
) -> Check {
    if !signing::verify_standard(secret, id, timestamp, body, signature) {
        Check::Invalid
    } else if !tolerance.is_zero() && now.abs_diff(timestamp) > tolerance.as_secs() {
        Check::Stale
    } else {
        Check::Valid
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    crate::now_ms() / 1000
}

/// A delivery as a receiver reads it.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// `X-Cirrus-Event` (`build`, `task`, `ping`, …), or guessed from the body when missing.
    pub event: String,
    /// `X-Cirrus-Delivery`, or `webhook-id`.
    pub delivery: Option<String>,
    pub action: Option<String>,
    pub old_status: Option<String>,
    /// The body, when it is JSON.
    pub body: Option<Json>,
    /// `X-Herald-Sequence`.
    pub sequence: Option<i64>,
}

impl Incoming {
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let json: Option<Json> = serde_json::from_slice(body).ok();
        let mut incoming = Self {
            event: String::new(),
            delivery: header("x-cirrus-delivery").or_else(|| header("webhook-id")),
            action: json.as_ref().and_then(|body| slack::text(&body["action"])),
            old_status: json
                .as_ref()
                .and_then(|body| slack::text(&body["old_status"])),
            body: json,
            sequence: header("x-herald-sequence").and_then(|n| n.trim().parse().ok()),
        };
        incoming.event = header("x-cirrus-event").unwrap_or_else(|| {
            if incoming.action.as_deref() == Some("ping") {
                "ping".into()
            } else if incoming.part("task").is_null() {
                "build".into()
            } else {
                "task".into()
            }
        });
        incoming
    }

    /// `repository`, `build` or `task`, from a FLAT body (top level) or a DATA body (under
    /// `data`); null when absent or empty (Cirrus sends `"task": {}` for build events).
    pub fn part(&self, name: &str) -> &Json {
        static NULL: Json = Json::Null;
        let Some(body) = &self.body else {
            return &NULL;
        };
        let value = match body.get(name) {
            Some(value) if !value.is_null() => value,
            _ => &body["data"][name],
        };
        match value {
            Json::Object(fields) if fields.is_empty() => &NULL,
            value => value,
        }
    }

    /// Whether this is a build or task event (rather than a ping or something unknown).
    pub fn is_ci_event(&self) -> bool {
        matches!(self.event.as_str(), "build" | "task") && self.body.is_some()
    }

    /// The event in the Slack formatter's terms.
    pub fn slack_event(&self) -> slack::Event<'_> {
        slack::Event {
            kind: &self.event,
            action: self.action.as_deref().unwrap_or("updated"),
            old_status: self.old_status.as_deref(),
            repository: self.part("repository"),
            build: self.part("build"),
            task: self.part("task"),
        }
    }

    /// The build's or task's status after the change.
    pub fn status(&self) -> Option<String> {
        self.slack_event().status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_styles_signatures_and_tokens_are_checked() {
        let body = b"{\"build_id\":67}";
        let hex = signing::cirrus_signature("s3cret", body);
        let check = |name: &'static str, value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            Signatures::check(
                &headers,
                body,
                Some("s3cret"),
                DEFAULT_TOLERANCE,
                now_secs(),
            )
        };
        let jobserv = check("x-jobserv-sig", format!("sha256:{hex}"));
        assert_eq!(
            (jobserv.cirrus, jobserv.style_header),
            (Check::Valid, "X-JobServ-Sig")
        );
        assert_eq!(
            check("x-jobserv-sig", hex.clone()).cirrus,
            Check::Invalid,
            "no prefix"
        );
        assert_eq!(
            check("x-hub-signature-256", format!("sha256={hex}")).cirrus,
            Check::Valid
        );
        assert_eq!(
            check("x-gitlab-token", "s3cret".into()).cirrus,
            Check::Valid
        );
        assert_eq!(
            check("x-codeup-token", "s3cre".into()).cirrus,
            Check::Invalid
        );
        assert!(check("x-codeup-token", "s3cret".into()).accepted());
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn both_schemes_are_checked_and_a_forged_one_spoils_the_other() {
        let body = br#"{"action":"created"}"#;
        let now = 1_700_000_000;
        let good = headers(&[
            ("x-cirrus-signature", signing::cirrus_signature("s", body)),
            ("webhook-id", "d1".into()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                signing::standard_signature("s", "d1", now, body),
            ),
        ]);
        let checked = Signatures::check(&good, body, Some("s"), DEFAULT_TOLERANCE, now);
        assert_eq!(
            (checked.cirrus, checked.standard),
            (Check::Valid, Check::Valid)
        );
        assert!(checked.accepted());

        let late = Signatures::check(&good, body, Some("s"), DEFAULT_TOLERANCE, now + 301);
        assert_eq!(late.standard, Check::Stale);
        assert!(!late.accepted());

        let mut forged = good.clone();
        forged.insert("x-cirrus-signature", "00".parse().unwrap());
        assert!(!Signatures::check(&forged, body, Some("s"), DEFAULT_TOLERANCE, now).accepted());

        let unsigned = HeaderMap::new();
        assert!(!Signatures::check(&unsigned, body, Some("s"), DEFAULT_TOLERANCE, now).accepted());
        let open = Signatures::check(&good, body, None, DEFAULT_TOLERANCE, now);
        assert_eq!(open.cirrus, Check::Unchecked);
        assert!(open.accepted());
    }

    #[test]
    fn flat_and_data_bodies_read_the_same() {
        let flat = br#"{"action":"updated","old_status":"EXECUTING","repository":{"id":1,"name":"app"},"build":{"id":2,"status":"FAILED"},"task":{}}"#;
        let data = br#"{"action":"updated","old_status":"EXECUTING","data":{"repository":{"id":"1","name":"app"},"build":{"id":"2","status":"FAILED"},"task":null}}"#;
        for body in [&flat[..], &data[..]] {
            let incoming = Incoming::parse(&HeaderMap::new(), body);
            assert_eq!(incoming.event, "build");
            assert_eq!(incoming.status().as_deref(), Some("FAILED"));
            assert_eq!(
                slack::text(&incoming.part("build")["id"]).as_deref(),
                Some("2")
            );
            assert!(incoming.part("task").is_null());
        }
    }
}
