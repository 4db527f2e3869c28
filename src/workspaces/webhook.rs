//! Workspace webhook URLs and their signing secrets.
//!
//! A workspace admin chooses where keygate POSTs budget alerts. Without care that is a
//! server-side request forgery: `http://169.254.169.254/…` (a cloud metadata service) or
//! `http://localhost:5432`. So a URL must be http(s), carry no credentials, and unless
//! `webhooks.allow_private` is set its host must not be, nor resolve to, a loopback,
//! private, link-local or otherwise non-public address. The alert sender checks the
//! addresses again when it connects ([`is_public`]), since a name can resolve differently
//! later (DNS rebinding).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};

use crate::{keys::KeyError, store::WebhookSecret};

/// Longest URL accepted (what browsers and proxies reliably carry).
pub const MAX_URL_CHARS: usize = 2048;
/// How long a host name may take to resolve before the URL is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Prefix of generated secrets, so that a leaked one is recognisable.
const SECRET_PREFIX: &str = "whsec_";
/// 40 base62 characters: about 238 bits from the OS CSPRNG.
const SECRET_CHARS: usize = 40;

fn invalid(message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field: "webhook_url".into(),
        message: message.into(),
    }
}

/// A fresh signing secret for a workspace's webhook.
pub fn new_secret() -> WebhookSecret {
    let random: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(SECRET_CHARS)
        .map(char::from)
        .collect();
    WebhookSecret::new(format!("{SECRET_PREFIX}{random}"))
}

/// Checks a webhook URL as described in the module docs and returns it normalised.
pub async fn validate_url(raw: &str, allow_private: bool) -> Result<String, KeyError> {
    let raw = raw.trim();
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(invalid(format!(
            "must be at most {MAX_URL_CHARS} characters"
        )));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not carry credentials (keygate signs every request instead)",
        ));
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match url.host() {
        None => return Err(invalid("must name a host")),
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(_)) if allow_private => Vec::new(),
        Some(url::Host::Domain(name)) => resolve(name, port).await?,
    };
    if !allow_private {
        if let Some(ip) = addresses.iter().find(|ip| !is_public(**ip)) {
            return Err(invalid(format!(
                "its host is or resolves to {ip}, a loopback, private, link-local or other \
                 non-public address (an operator can allow those with webhooks.allow_private)"
            )));
        }
    }
    Ok(url.to_string())
}

async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, KeyError> {
    let lookup = tokio::net::lookup_host((name, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(found)) => {
            let addresses: Vec<IpAddr> = found.map(|addr| addr.ip()).collect();
            if addresses.is_empty() {
                Err(invalid(format!("its host `{name}` has no address")))
            } else {
                Ok(addresses)
            }
        }
        Ok(Err(err)) => Err(invalid(format!(
            "its host `{name}` does not resolve ({err})"
        ))),
        Err(_) => Err(invalid(format!(
            "its host `{name}` did not resolve within {} s",
            RESOLVE_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether `ip` is a public unicast address: not unspecified, loopback, private (RFC 1918,
/// unique local), shared (CGNAT), link-local, multicast, broadcast, documentation,
/// benchmarking or reserved. IPv4 addresses embedded in IPv6 (mapped, NAT64) are judged as
/// IPv4. Hand-written because `IpAddr::is_global` is not stable yet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0                                   // "this network"
        || (a == 100 && (64..128).contains(&b))     // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))       // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00      // unique local
        || (segments[0] & 0xffc0) == 0xfe80      // link-local
        || (segments[0] & 0xffc0) == 0xfec0      // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..5] == [0, 0, 0, 0, 0]) // IPv4-compatible and other reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        let ok = validate_url("https://93.184.216.34/hook", false)
            .await
            .unwrap();
        assert_eq!(ok, "https://93.184.216.34/hook");
        for bad in [
            "ftp://93.184.216.34/",
            "not a url",
            "https://user:pw@93.184.216.34/",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/",
        ] {
            let err = validate_url(bad, false).await.unwrap_err();
            assert!(
                matches!(&err, KeyError::Invalid { field, .. } if field == "webhook_url"),
                "{bad}: {err}"
            );
        }
        assert!(validate_url("http://127.0.0.1:9/", true).await.is_ok());
        assert!(validate_url("http://localhost:9/", true).await.is_ok());
    }

    #[test]
    fn secrets_are_fresh_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.expose().len(), 6 + 40);
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
