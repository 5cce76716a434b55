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
use crate::domain::headers::{Header, hook_name};
use crate::domain::{EndpointUrl, SignatureStyle};
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

/// How an endpoint's deliveries are authenticated: its style, the secrets that sign, and its
/// custom headers, worked out once for all of them.
pub struct Signing {
    style: SignatureStyle,
    /// The secrets that sign, ready to sign with; none for an endpoint without a secret. The
    /// first signs the style's own header: during a rotation's overlap, that is the replaced
    /// secret, so that a receiver holding it keeps verifying until the overlap ends. Every one
    /// signs `webhook-signature`.
    signers: Vec<Signer>,
    /// The secret of the first, as the token header of the styles that send the secret itself.
    token: Option<HeaderValue>,
    /// The custom headers, values marked sensitive.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Signing {
    /// The signing of an endpoint of `style` whose secret is `current` (if it has one), with
    /// the secret a rotation replaced while its overlap lasts, and these custom headers.
    pub fn new(
        style: SignatureStyle,
        current: Option<&str>,
        replaced: Option<&str>,
        headers: &[Header],
    ) -> Self {
        let mut secrets: Vec<&str> = Vec::with_capacity(2);
        secrets.extend(replaced);
        secrets.extend(current);
        let token = secrets.first().and_then(|secret| sensitive(secret));
        Self {
            style,
            signers: secrets.into_iter().map(Signer::new).collect(),
            token,
            headers: headers
                .iter()
                .filter_map(|header| {
                    Some((
                        HeaderName::from_bytes(header.name.as_bytes()).ok()?,
                        sensitive(&header.value)?,
                    ))
                })
                .collect(),
        }
    }
}

/// A header value marked sensitive, so that it is never logged; none if it cannot be one.
fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// One request to send.
pub struct Outgoing<'a> {
    pub to: &'a Destination,
    /// `build`, `task`, `audit_event`, `ping` or a published type.
    pub event: &'a str,
    pub delivery_id: &'a str,
    /// The event's time, ms since the epoch.
    pub event_timestamp: i64,
    pub signing: &'a Signing,
    /// The work id of the build or task (`X-Herald-Work-Id`), when an approval hook gave one.
    pub work_id: Option<&'a str>,
    /// The delivery's place among its endpoint's (`X-Herald-Sequence`).
    pub sequence: Option<i64>,
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
    let signing = out.signing;
    let mut headers = HeaderMap::with_capacity(14 + signing.headers.len());
    // Custom headers first: none of them may be one Herald sets, which would replace it.
    for (name, value) in &signing.headers {
        headers.insert(name.clone(), value.clone());
    }
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
    let event = HeaderValue::from_str(out.event).ok();
    put("x-cirrus-event", event.clone());
    put("x-cirrus-delivery", delivery_id.clone());
    put("x-cirrus-timestamp", Some(out.event_timestamp.into()));
    put("webhook-id", delivery_id.clone());
    put("webhook-timestamp", Some(attempt_seconds.into()));
    put(
        "x-herald-work-id",
        out.work_id.and_then(|id| HeaderValue::from_str(id).ok()),
    );
    put("x-herald-sequence", out.sequence.map(HeaderValue::from));
    let body = out.body.as_bytes();
    let hook = || HeaderValue::try_from(hook_name(out.event)).ok();
    match signing.style {
        SignatureStyle::Cirrus | SignatureStyle::Jobserv | SignatureStyle::None => {}
        SignatureStyle::Github => {
            put("x-github-event", event);
            put("x-github-delivery", delivery_id);
        }
        SignatureStyle::Gitlab => put("x-gitlab-event", hook()),
        SignatureStyle::Codeup => put("codeup-event", hook()),
    }
    if signing.style != SignatureStyle::None
        && let Some(first) = signing.signers.first()
    {
        let standard = signing
            .signers
            .iter()
            .rev()
            .map(|signer| signer.standard(out.delivery_id, attempt_seconds, body))
            .collect::<Vec<_>>()
            .join(" ");
        put("webhook-signature", HeaderValue::try_from(standard).ok());
        let token = || signing.token.clone();
        match signing.style {
            SignatureStyle::Cirrus => put(
                "x-cirrus-signature",
                HeaderValue::try_from(first.cirrus(body)).ok(),
            ),
            SignatureStyle::Github => put(
                "x-hub-signature-256",
                HeaderValue::try_from(format!("sha256={}", first.cirrus(body))).ok(),
            ),
            SignatureStyle::Jobserv => put(
                "x-jobserv-sig",
                HeaderValue::try_from(format!("sha256:{}", first.cirrus(body))).ok(),
            ),
            SignatureStyle::Gitlab => put("x-gitlab-token", token()),
            SignatureStyle::Codeup => put("x-codeup-token", token()),
            SignatureStyle::None => {}
        }
    }
    let mut request = reqwest::Request::new(Method::POST, out.to.target.clone());
    *request.headers_mut() = headers;
    *request.body_mut() = Some(out.body.into());
    request
}

/// The headers a delivery of `event` with `body` would carry in `style`, in the order sent, as
/// (name, shown value): what the console's preview shows. Secrets, tokens and signatures are
/// masked (a signature keeps its prefix, `sha256=` or `v1,`), custom header values are masked,
/// and the delivery's id and times are examples.
pub fn preview_headers(
    style: SignatureStyle,
    with_secret: bool,
    custom: &[Header],
    event: &str,
    body: &str,
) -> Vec<(String, String)> {
    const MASK: &str = "********";
    let masked: Vec<Header> = custom
        .iter()
        .map(|header| Header {
            name: header.name.clone(),
            value: MASK.into(),
        })
        .collect();
    let signing = Signing::new(style, with_secret.then_some(MASK), None, &masked);
    let url = EndpointUrl::parse("https://receiver.example/").expect("a valid URL");
    let request = build_request(Outgoing {
        to: &Destination::new(&url, false),
        event,
        delivery_id: "00000000-0000-7000-8000-000000000000",
        event_timestamp: crate::now_ms(),
        signing: &signing,
        work_id: None,
        sequence: Some(1),
        body: body.to_owned(),
    });
    request
        .headers()
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes());
            let shown = match name.as_str() {
                "x-cirrus-signature" => MASK.to_owned(),
                "x-hub-signature-256" | "x-jobserv-sig" => format!("{}{MASK}", &text[..7]),
                "webhook-signature" => format!("v1,{MASK}"),
                _ if value.is_sensitive() => MASK.to_owned(),
                _ => text.into_owned(),
            };
            (name.as_str().to_owned(), shown)
        })
        .collect()
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
