//! A URL as endpoints and approval hooks store it: the URL without credentials in one column,
//! its `user:password` sealed in another.

use crate::Result;
use crate::domain::EndpointUrl;
use crate::secrets::Vault;

/// The stored URL, and its credentials sealed, of `url`.
pub fn to_stored(url: &EndpointUrl, vault: &Vault) -> Result<(String, Option<String>)> {
    let credentials = url.userinfo().map(|info| vault.seal(&info)).transpose()?;
    Ok((url.target().to_string(), credentials))
}

/// The URL a stored URL and its sealed credentials make, credentials opened.
pub fn opened(url: &str, credentials: Option<&str>, vault: &Vault) -> Result<EndpointUrl> {
    let url = EndpointUrl::parse(url)?;
    match credentials {
        Some(credentials) => url.with_userinfo(&vault.open(credentials)?),
        None => Ok(url),
    }
}

/// The stored URL as it may be shown: any credentials as `***:***` (none is opened).
pub fn masked(url: &str, has_credentials: bool) -> Result<String> {
    let url = EndpointUrl::parse(url)?;
    match has_credentials {
        true => Ok(url.with_userinfo("***:***")?.as_stored().to_owned()),
        false => Ok(url.masked()),
    }
}
