//! The SSRF guard: deliveries never reach loopback, private, link-local, unique-local,
//! multicast or unspecified addresses unless the operator allows private targets.
//!
//! Names are checked after resolution, inside the client's resolver, and the connection goes to
//! the vetted addresses (no second lookup, so DNS rebinding gains nothing). Literal addresses,
//! in every spelling the URL standard accepts, are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ipnet::IpNet;

use crate::domain::EndpointUrl;
use crate::{Error, Result};

/// Which destinations deliveries may reach.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// Allow every internal address (local development).
    pub allow_private: bool,
    /// Internal networks the operator allows anyway (an internal receiver, say).
    pub allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// The policy `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            allow_private: config.allow_private_targets,
            allowed: config.allowed_targets.clone(),
        }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_blocked(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }
}

/// Resolves host names; the system resolver in production, a scripted one in tests.
pub trait Lookup: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|addr| addr.ip())
                .collect())
        })
    }
}

/// The one-sentence reason an attempt to a blocked destination fails (it names no address).
pub const BLOCKED: &str = "the destination is a private, loopback or otherwise internal address, which Herald does not deliver to";

/// The resolver's refusal, recognised in the client's error chain.
#[derive(Debug)]
pub struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(BLOCKED)
    }
}

impl std::error::Error for Blocked {}

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
        || (a == 192 && b == 88 && ip.octets()[2] == 99) // 6to4 relays (deprecated)
        || ip == Ipv4Addr::new(168, 63, 129, 16) // Azure's platform endpoint (metadata, DNS)
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
        || first == 0x2001 && ip.segments()[1] == 0 // Teredo 2001::/32 (its IPv4 is obfuscated)
        || first == 0x0064 && ip.segments()[1..3] == [0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
        || first == 0x0100 && ip.segments()[1..4] == [0, 0, 0] // discard-only 100::/64
}

/// The IPv4 address inside an IPv4-mapped, IPv4-translated (SIIT), IPv4-compatible, NAT64,
/// ISATAP or 6to4 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail); // IPv4-translated ::ffff:0:a.b.c.d
    }
    if s[4] & 0xfdff == 0 && s[5] == 0x5efe {
        return Some(tail); // ISATAP interface identifier, under any prefix
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
pub fn check_url(url: &EndpointUrl, policy: &TargetPolicy) -> Result<()> {
    if policy.allow_private {
        return Ok(());
    }
    let local_name = url
        .domain()
        .map(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        })
        .unwrap_or(false);
    if local_name || url.literal_ip().is_some_and(|ip| !policy.permits(ip)) {
        return Err(Error::Invalid(
            "The webhook URL points to a private or loopback address, which Herald does not deliver to unless private targets are allowed.".into(),
        ));
    }
    Ok(())
}

/// The client's resolver: looks names up once and hands the client only vetted addresses, so
/// the connection goes to one of them. A name with any address the policy forbids is refused
/// whole, even beside allowed ones: such a name points inside, whatever else it answers.
pub struct GuardedResolver {
    pub policy: TargetPolicy,
    pub lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = lookup.lookup(&host).await?;
            if resolved.is_empty() || resolved.iter().any(|ip| !policy.permits(*ip)) {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
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
            "::ffff:0:7f00:1",
            "::5efe:7f00:1",
            "2001:db9::200:5efe:a00:1",
            "64:ff9b:1::7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "192.88.99.1",
            "168.63.129.16",
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
            "2001:db9::5efe:808:808",
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
            assert!(
                check_url(&parsed, &TargetPolicy::default()).is_err(),
                "{url} was accepted"
            );
            let open = TargetPolicy {
                allow_private: true,
                allowed: Vec::new(),
            };
            assert!(check_url(&parsed, &open).is_ok());
        }
        let public = EndpointUrl::parse("https://hooks.example.com/").unwrap();
        assert!(check_url(&public, &TargetPolicy::default()).is_ok());
        let allowlisted = TargetPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.2/32".parse().unwrap()],
        };
        assert!(
            check_url(
                &EndpointUrl::parse("http://127.0.0.2:9000/").unwrap(),
                &allowlisted
            )
            .is_ok()
        );
        assert!(
            check_url(
                &EndpointUrl::parse("http://127.0.0.1:9000/").unwrap(),
                &allowlisted
            )
            .is_err()
        );
    }
}
