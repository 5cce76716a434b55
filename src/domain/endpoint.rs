//! Endpoint URLs: parsed once, with their credentials kept apart and never shown unmasked.

use std::net::IpAddr;

use url::Url;

use crate::{Error, Result};

/// The longest URL Herald stores.
const MAX_URL_LEN: usize = 2048;

/// A webhook URL that parsed: http or https, with a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointUrl(Url);

impl EndpointUrl {
    /// Parses a URL as typed by a user; the error is one sentence naming the problem.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Invalid("The webhook URL is empty.".into()));
        }
        if text.len() > MAX_URL_LEN {
            return Err(Error::Invalid(format!(
                "The webhook URL is longer than {MAX_URL_LEN} characters."
            )));
        }
        let url = Url::parse(text).map_err(|err| {
            Error::Invalid(format!("The webhook URL could not be parsed: {err}."))
        })?;
        // What is stored is the parsed form, percent-encoded: three bytes for each byte of a
        // non-ASCII character. It must fit too, or the stored URL could not be read back.
        if url.as_str().len() > MAX_URL_LEN {
            return Err(Error::Invalid(format!(
                "The webhook URL is longer than {MAX_URL_LEN} characters once percent-encoded."
            )));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Invalid(format!(
                "The webhook URL must use http or https, not {}.",
                url.scheme()
            )));
        }
        match url.host_str() {
            None | Some("") => {
                return Err(Error::Invalid("The webhook URL has no host.".into()));
            }
            Some(_) => {}
        }
        if url.fragment().is_some() {
            return Err(Error::Invalid(
                "The webhook URL must not have a #fragment.".into(),
            ));
        }
        Ok(Self(url))
    }

    /// The URL exactly as stored, credentials included. Never show this to anyone.
    pub fn as_stored(&self) -> &str {
        self.0.as_str()
    }

    /// The URL to send to: the stored one without its credentials.
    pub fn target(&self) -> Url {
        let mut url = self.0.clone();
        // Setting these can only fail for URLs that cannot have credentials, which parse refused.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url
    }

    /// The URL's user information as written (`user` or `user:password`, percent-encoded).
    pub fn userinfo(&self) -> Option<String> {
        match (self.0.username(), self.0.password()) {
            ("", None) => None,
            (user, None) => Some(user.to_owned()),
            (user, Some(password)) => Some(format!("{user}:{password}")),
        }
    }

    /// This URL with the given user information (as [`EndpointUrl::userinfo`] returns it).
    pub fn with_userinfo(&self, userinfo: &str) -> Result<Self> {
        let mut url = self.0.clone();
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        url.set_username(user)
            .and_then(|()| url.set_password(password))
            .map_err(|()| Error::internal("stored credentials do not fit the stored URL"))?;
        Ok(Self(url))
    }

    /// The user name and password given in the URL, sent as HTTP Basic authentication.
    pub fn credentials(&self) -> Option<(String, Option<String>)> {
        let user = percent_decode(self.0.username());
        let password = self.0.password().map(percent_decode);
        (!user.is_empty() || password.is_some()).then_some((user, password))
    }

    /// The URL as it may be shown: any credentials replaced by `***`.
    pub fn masked(&self) -> String {
        let mut url = self.0.clone();
        if !url.username().is_empty() {
            let _ = url.set_username("***");
        }
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        url.to_string()
    }

    /// The host's literal IP address, when the URL names one (in any spelling the URL
    /// standard accepts: `0x7f000001`, `2130706433` and `127.1` are all 127.0.0.1).
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }

    /// The host name, when it is a name rather than an address.
    pub fn domain(&self) -> Option<&str> {
        self.0.domain()
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A secret as it may be shown: never more than its last four characters.
pub fn mask_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 16 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("********{tail}")
    } else {
        "********".to_string()
    }
}

/// The longest name of a named secret.
pub const MAX_SECRET_NAME: usize = 64;

/// Checks the name of a named secret: a letter or digit, then letters, digits, `_`, `.` or
/// `-`, at most [`MAX_SECRET_NAME`] characters (`webhook-docs-example`).
pub fn check_secret_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let fine = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= MAX_SECRET_NAME;
    if !fine {
        return Err(Error::Invalid(format!(
            "The secret name {name:?} must be a letter or digit followed by at most {} letters, digits, `_`, `.` or `-`.",
            MAX_SECRET_NAME - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_plain_words() {
        check_secret_name("webhook-docs-example").unwrap();
        check_secret_name("9.lives_x").unwrap();
        for bad in ["", "-x", "a b", "é", &"x".repeat(65)] {
            assert!(check_secret_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_what_is_not_a_webhook_url() {
        for bad in [
            "",
            "not a url",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://",
            "https://example.com/#x",
        ] {
            assert!(EndpointUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn credentials_are_split_off_and_masked() {
        let url = EndpointUrl::parse("https://bot:s%40cret@hooks.example.com/ci?x=1").unwrap();
        assert_eq!(
            url.credentials(),
            Some(("bot".into(), Some("s@cret".into())))
        );
        assert_eq!(url.target().as_str(), "https://hooks.example.com/ci?x=1");
        assert_eq!(url.masked(), "https://***:***@hooks.example.com/ci?x=1");
        assert!(!url.masked().contains("cret"));
    }

    #[test]
    fn odd_ipv4_spellings_are_recognised() {
        for spelling in ["http://0x7f000001/", "http://2130706433/", "http://127.1/"] {
            let url = EndpointUrl::parse(spelling).unwrap();
            assert_eq!(
                url.literal_ip(),
                Some("127.0.0.1".parse().unwrap()),
                "{spelling}"
            );
        }
    }

    #[test]
    fn masks_show_at_most_four_characters() {
        assert_eq!(mask_secret("short"), "********");
        assert_eq!(mask_secret("0123456789abcdefWXYZ"), "********WXYZ");
    }
}
