//! Custom headers an endpoint sends with every delivery, and the event names of the styles that
//! name an event in words (`Tag Push Hook`).

use crate::{Error, Result};

/// The custom headers one endpoint may have.
pub const MAX_HEADERS: usize = 20;
/// The longest custom header name.
pub const MAX_HEADER_NAME: usize = 64;
/// The longest custom header value.
pub const MAX_HEADER_VALUE: usize = 4096;

/// Headers Herald sets itself, or that belong to the connection; no custom header may use them.
const OWN: [&str; 16] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "user-agent",
    "x-hub-signature",
    "x-hub-signature-256",
    "codeup-event",
    "accept",
];

/// Prefixes of header families Herald sets itself.
const OWN_PREFIXES: [&str; 8] = [
    "x-cirrus-",
    "webhook-",
    "x-github-",
    "x-jobserv-",
    "x-gitlab-",
    "x-codeup-",
    "x-herald-",
    "proxy-",
];

/// One custom header, checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Checks a custom header's name: an HTTP token (RFC 9110), not one Herald sets itself.
pub fn check_name(name: &str) -> Result<()> {
    let token = !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(Error::Invalid(format!(
            "The header name {name:?} must be 1 to {MAX_HEADER_NAME} letters, digits or !#$%&'*+-.^_`|~."
        )));
    }
    let lower = name.to_ascii_lowercase();
    if OWN.contains(&lower.as_str()) || OWN_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        return Err(Error::Invalid(format!(
            "The header {name} is one Herald sets itself; choose another name."
        )));
    }
    Ok(())
}

/// Checks a custom header's value: visible ASCII, spaces and tabs, 1 to [`MAX_HEADER_VALUE`]
/// characters.
pub fn check_value(name: &str, value: &str) -> Result<()> {
    let fine = !value.trim().is_empty()
        && value.len() <= MAX_HEADER_VALUE
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    if !fine {
        return Err(Error::Invalid(format!(
            "The value of header {name} must be 1 to {MAX_HEADER_VALUE} visible ASCII characters, spaces or tabs."
        )));
    }
    Ok(())
}

/// Checks a whole list of custom headers: each name and value, at most [`MAX_HEADERS`], no name
/// twice (names compare case-insensitively).
pub fn check_all(headers: &[Header]) -> Result<()> {
    super::limits::count("custom headers", headers.len(), MAX_HEADERS)?;
    for (i, header) in headers.iter().enumerate() {
        check_name(&header.name)?;
        check_value(&header.name, &header.value)?;
        if headers[..i]
            .iter()
            .any(|earlier| earlier.name.eq_ignore_ascii_case(&header.name))
        {
            return Err(Error::Invalid(format!(
                "The header {} is listed twice.",
                header.name
            )));
        }
    }
    Ok(())
}

/// The name GitLab-style receivers know an event by: its type's words (split on `_`, `-`, `.`
/// and where a lowercase letter meets an uppercase one), each capitalised, then ` Hook`.
/// `tag_push` is `Tag Push Hook`, `PostDeployment` is `Post Deployment Hook`.
pub fn hook_name(event: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for c in event.chars() {
        if matches!(c, '_' | '-' | '.' | ' ') {
            previous = None;
            continue;
        }
        let boundary = previous.is_none_or(|p| p.is_lowercase() && c.is_uppercase());
        if boundary {
            words.push(c.to_uppercase().collect());
        } else if let Some(word) = words.last_mut() {
            word.push(c);
        }
        previous = Some(c);
    }
    words.push("Hook".into());
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_are_capitalised_words() {
        assert_eq!(hook_name("push"), "Push Hook");
        assert_eq!(hook_name("tag_push"), "Tag Push Hook");
        assert_eq!(hook_name("merge_request"), "Merge Request Hook");
        assert_eq!(hook_name("note"), "Note Hook");
        assert_eq!(hook_name("build"), "Build Hook");
        assert_eq!(hook_name("audit_event"), "Audit Event Hook");
        assert_eq!(hook_name("PostDeployment"), "Post Deployment Hook");
        assert_eq!(hook_name("deploy.finished-ok"), "Deploy Finished Ok Hook");
    }

    #[test]
    fn herald_s_own_headers_and_bad_tokens_are_refused() {
        check_name("X-Team").unwrap();
        check_name("Authorization").unwrap();
        for bad in [
            "",
            "a b",
            "X-Cirrus-Event",
            "webhook-signature",
            "Content-Type",
            "x-gitlab-token",
            "HOST",
            "X:Y",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_value("X", "line\r\nInjected: 1").is_err());
        assert!(check_value("X", "").is_err());
        check_value("X", "Bearer abc").unwrap();
        let twice = [
            Header {
                name: "X-A".into(),
                value: "1".into(),
            },
            Header {
                name: "x-a".into(),
                value: "2".into(),
            },
        ];
        assert!(check_all(&twice).is_err());
    }
}
