//! The SSRF guard: deliveries never reach loopback, private, link-local, unique-local,
//! multicast or unspecified addresses unless the operator allows private targets.
//!
//! Names are checked after resolution, inside the client's resolver, and the connection goes to
//! the vetted addresses (no second lookup, so DNS rebinding gains nothing). Literal addresses,
//! in every spelling the URL standard accepts, are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::domain::EndpointUrl;
use crate::{Error, Result};

/// The one-sentence reason an attempt to a blocked destination fails (it names no address).
pub const BLOCKED: &str = "the destination is a private, loopback or otherwise internal address, which Herald does not deliver to";

/// Whether deliveries to `ip` are refused when private targets are not allowed.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_blocked_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site local (deprecated) fec0::/10
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0100 && ip.segments()[1..4] == [0, 0, 0] // discard-only 100::/64
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail); // IPv4-compatible ::a.b.c.d
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail); // NAT64 64:ff9b::/96
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Refuses, at save time, a URL that can only point inside: a blocked literal address or a
/// `localhost` name.
pub fn check_url(url: &EndpointUrl, allow_private: bool) -> Result<()> {
    if allow_private {
        return Ok(());
    }
    let local_name = url
        .domain()
        .map(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        })
        .unwrap_or(false);
    if local_name || url.literal_ip().is_some_and(is_blocked) {
        return Err(Error::Invalid(
            "The webhook URL points to a private or loopback address, which Herald does not deliver to unless private targets are allowed.".into(),
        ));
    }
    Ok(())
}

/// The client's resolver: looks names up once and keeps only the addresses it may contact.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| allow_private || !is_blocked(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(BLOCKED.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_blocked() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(is_blocked(ip.parse().unwrap()), "{ip} is not blocked");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_blocked(ip.parse().unwrap()), "{ip} is blocked");
        }
    }

    #[test]
    fn odd_spellings_and_localhost_are_refused_at_save() {
        for url in [
            "http://0x7f000001/",
            "http://2130706433/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
        ] {
            let parsed = EndpointUrl::parse(url).unwrap();
            assert!(check_url(&parsed, false).is_err(), "{url} was accepted");
            assert!(check_url(&parsed, true).is_ok());
        }
        assert!(
            check_url(
                &EndpointUrl::parse("https://hooks.example.com/").unwrap(),
                false
            )
            .is_ok()
        );
    }
}
