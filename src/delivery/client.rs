//! The outbound client: one reqwest client per TLS mode, redirects off, proxies off, the SSRF
//! guard as its resolver, every attempt bounded by the delivery timeout, responses read only up
//! to a cap.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use reqwest::{Method, Url};

use super::guard::{BLOCKED, Blocked, GuardedResolver, Lookup, TargetPolicy};
use crate::domain::EndpointUrl;
use crate::signing::Signer;

/// How much of a response body is kept.
pub const RESPONSE_CAP: usize = 64 * 1024;

/// The `User-Agent` of every delivery.
pub const AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// Where an endpoint's deliveries go, worked out once for all of them: the URL to send to,
/// without its credentials, those credentials as an `Authorization` header, and the host's
/// address when the URL names one.
pub struct Destination {
    target: Url,
    authorization: Option<HeaderValue>,
    literal_ip: Option<IpAddr>,
    insecure_ssl: bool,
}

impl Destination {
    pub fn new(url: &EndpointUrl, insecure_ssl: bool) -> Self {
        Self {
            target: url.target(),
            literal_ip: url.literal_ip(),
            authorization: url
                .credentials()
                .map(|(user, password)| basic_auth(&user, password.as_deref())),
            insecure_ssl,
        }
    }
}

/// HTTP Basic authentication (RFC 7617) of a user and password, as a header value that is
/// marked sensitive.
fn basic_auth(user: &str, password: Option<&str>) -> HeaderValue {
    let mut header = String::from("Basic ");
    BASE64.encode_string(format!("{user}:{}", password.unwrap_or("")), &mut header);
    let mut value = HeaderValue::try_from(header).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// One request to send.
pub struct Outgoing<'a> {
    pub to: &'a Destination,
    /// `build`, `task`, `audit_event` or `ping`.
    pub event: &'a str,
    pub delivery_id: &'a str,
    /// The event's time, ms since the epoch.
    pub event_timestamp: i64,
    /// The endpoint's secret, ready to sign with; none for an endpoint without one.
    pub signer: Option<&'a Signer>,
    /// Moved into the request as it is: the payload is not copied.
    pub body: String,
}

/// What came back, or why nothing did.
#[derive(Debug)]
pub struct Answer {
    pub status: Option<u16>,
    /// The response's headers as a JSON object: each name once, with its last value; `{}`
    /// without a response.
    pub headers: String,
    /// The response's `Retry-After`, when it has one.
    pub retry_after: Option<String>,
    pub body: String,
    /// One sentence, when no HTTP answer came.
    pub error: Option<String>,
    pub duration: Duration,
}

/// Sends deliveries.
#[derive(Clone)]
pub struct Sender {
    verified: reqwest::Client,
    insecure: reqwest::Client,
    timeout: Duration,
    policy: TargetPolicy,
}

impl Sender {
    /// A sender whose connections go only where `policy` permits, resolving names with `lookup`.
    pub fn new(
        timeout: Duration,
        policy: TargetPolicy,
        lookup: Arc<dyn Lookup>,
    ) -> anyhow::Result<Self> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // reqwest retries only HTTP/2's and HTTP/3's refusals, which an HTTP/1.1
                // client never gets. With no retries allowed, a request is not copied before
                // it is sent in case of one.
                .retry(reqwest::retry::never().max_retries_per_request(0))
                .no_proxy()
                .timeout(timeout)
                .connect_timeout(timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .tls_danger_accept_invalid_certs(insecure)
                .dns_resolver(Arc::new(GuardedResolver {
                    policy: policy.clone(),
                    lookup: lookup.clone(),
                }))
                .build()
        };
        Ok(Self {
            verified: build(false)?,
            insecure: build(true)?,
            timeout,
            policy,
        })
    }

    /// Where deliveries may go.
    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// Sends one attempt; never takes longer than the delivery timeout.
    pub async fn send(&self, out: Outgoing<'_>) -> Answer {
        let started = Instant::now();
        let failed = |error: &str| Answer {
            status: None,
            headers: "{}".to_owned(),
            retry_after: None,
            body: String::new(),
            error: Some(error.to_owned()),
            duration: started.elapsed(),
        };
        if out.to.literal_ip.is_some_and(|ip| !self.policy.permits(ip)) {
            return failed(BLOCKED);
        }
        let client = if out.to.insecure_ssl {
            &self.insecure
        } else {
            &self.verified
        };
        let request = build_request(out);
        // One deadline bounds the whole attempt. A status that arrived in time is kept even
        // when the body is still trickling at the deadline: the body read just stops there.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut response = match tokio::time::timeout_at(deadline, client.execute(request)).await {
            Err(_) => {
                return failed(&format!(
                    "the receiver did not answer within {}",
                    humantime(self.timeout)
                ));
            }
            Ok(Err(err)) => return failed(&describe(&err, self.timeout)),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        // The header values are slices of the connection's read buffer: they are read and
        // dropped before the body is, so that they do not keep the connection from reading its
        // next response into the same buffer once it is back in the pool.
        let (headers, retry_after) = read_headers(std::mem::take(response.headers_mut()));
        let body = read_capped(response, deadline).await;
        Answer {
            status: Some(status),
            headers,
            retry_after,
            body: storable(&body),
            error: None,
            duration: started.elapsed(),
        }
    }
}

/// The request of one attempt. Its headers are set on the request itself, each once, in a
/// map made large enough for all of them and the `accept` the client adds to it.
fn build_request(out: Outgoing<'_>) -> reqwest::Request {
    let attempt_seconds = crate::now_ms() / 1000;
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    if let Some(authorization) = &out.to.authorization {
        headers.insert(AUTHORIZATION, authorization.clone());
    }
    let mut put = |name: &'static str, value: Option<HeaderValue>| {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let delivery_id = HeaderValue::from_str(out.delivery_id).ok();
    put("x-cirrus-event", HeaderValue::from_str(out.event).ok());
    put("x-cirrus-delivery", delivery_id.clone());
    put("x-cirrus-timestamp", Some(out.event_timestamp.into()));
    put("webhook-id", delivery_id);
    put("webhook-timestamp", Some(attempt_seconds.into()));
    if let Some(signer) = out.signer {
        let body = out.body.as_bytes();
        let standard = signer.standard(out.delivery_id, attempt_seconds, body);
        put(
            "x-cirrus-signature",
            HeaderValue::try_from(signer.cirrus(body)).ok(),
        );
        put("webhook-signature", HeaderValue::try_from(standard).ok());
    }
    let mut request = reqwest::Request::new(Method::POST, out.to.target.clone());
    *request.headers_mut() = headers;
    *request.body_mut() = Some(out.body.into());
    request
}

/// A response's headers as JSON (see [`HeadersJson`]), and its `Retry-After`. The map is
/// dropped here.
fn read_headers(headers: HeaderMap) -> (String, Option<String>) {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let json = serde_json::to_string(&HeadersJson(&headers))
        .expect("header names and lossy text serialize");
    (json, retry_after)
}

/// Response headers as a JSON object, serialized straight from the map: each name once, in the
/// order of its first appearance, with its last value.
struct HeadersJson<'a>(&'a HeaderMap);

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.keys().map(|name| {
            let value = self.0.get_all(name).iter().next_back();
            (
                name.as_str(),
                String::from_utf8_lossy(value.map_or(&[][..], |v| v.as_bytes())),
            )
        }))
    }
}

/// A response body as text the delivery log can store: invalid UTF-8 and NUL bytes (a gzip
/// header has some; PostgreSQL's text and JSON hold none) become U+FFFD.
fn storable(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

/// Reads a body up to [`RESPONSE_CAP`] bytes or until `deadline`, and drops the rest unread.
/// Bodies are not decompressed (the client asks for none), so a small compressed body cannot
/// inflate.
async fn read_capped(mut response: reqwest::Response, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < RESPONSE_CAP {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let room = RESPONSE_CAP - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        }
    }
    body
}

/// One sentence for a failed request; it names no address.
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    let mut chain = String::new();
    let mut blocked = false;
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(current) = source {
        blocked |= current.downcast_ref::<Blocked>().is_some();
        chain.push_str(&current.to_string().to_lowercase());
        chain.push(' ');
        source = current.source();
    }
    if blocked {
        BLOCKED.to_owned()
    } else if err.is_timeout() {
        format!("the receiver did not answer within {}", humantime(timeout))
    } else if chain.contains("dns")
        || chain.contains("failed to lookup")
        || chain.contains("name or service not known")
    {
        "the receiver's host name could not be resolved".to_owned()
    } else if chain.contains("certificate") || chain.contains("tls") {
        "the TLS handshake with the receiver failed (its certificate was not accepted)".to_owned()
    } else if chain.contains("connection refused") {
        "the receiver refused the connection".to_owned()
    } else if err.is_connect() {
        "the connection to the receiver could not be established".to_owned()
    } else if err.is_body() || err.is_decode() {
        "the receiver's response could not be read".to_owned()
    } else {
        "the receiver closed the connection or sent a malformed HTTP response".to_owned()
    }
}

fn humantime(duration: Duration) -> String {
    crate::domain::retry::format_duration(duration)
}
