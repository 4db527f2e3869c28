//! Webhook signatures, Stripe's scheme: `keygate-signature: t=<unix seconds>,v1=<hex>` where
//! `v1` is HMAC-SHA256, keyed with the workspace's whole `whsec_…` secret, over
//! `"{t}.{body}"`. Signing the timestamp with the body lets a receiver refuse replays of an
//! old delivery (docs/webhooks.md shows the check).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a signature travels in.
pub const SIGNATURE_HEADER: &str = "keygate-signature";

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn signature_header(secret: &str, timestamp: i64, body: &str) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"` keyed with `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn the_header_carries_time_and_signature() {
        let header = signature_header("whsec_x", 42, "{}");
        assert_eq!(header, format!("t=42,v1={}", sign("whsec_x", 42, "{}")));
        assert_ne!(sign("whsec_x", 42, "{}"), sign("whsec_x", 43, "{}"));
        assert_ne!(sign("whsec_x", 42, "{}"), sign("whsec_y", 42, "{}"));
    }
}
