//! Web3 key creation (the Venice `generate_web3_key` flow, DESIGN §3 `wallet_address`):
//! short-lived challenge tokens signed by the server, and EIP-191 `personal_sign`
//! signature recovery. Pure functions and data; no HTTP, no store.
//!
//! **Token.** `kgw3.<nonce>.<exp>.<mac>`: `nonce` is 16 random bytes in hex (the one-time
//! id the store records when the token is used), `exp` the expiry in Unix seconds, `mac`
//! the hex HMAC-SHA256 of `kgw3.<nonce>.<exp>` under the server's token key. Plain text on
//! purpose: it is the message the wallet shows its owner before signing.
//!
//! **Signature.** The wallet signs the token string with `personal_sign` (EIP-191 version
//! `0x45`): keccak256 of `"\x19Ethereum Signed Message:\n" + len(token) + token`, a 65-byte
//! `r ‖ s ‖ v` signature (hex, `0x` optional, `v` 27/28 or 0/1). The public key is recovered
//! from it and its address (last 20 bytes of keccak256 of the uncompressed point) must be
//! the claimed one.

use std::{fmt, str::FromStr, sync::OnceLock, time::Duration};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use rand::RngCore;
use sha2::Sha256;
use sha3::{Digest, Keccak256};

/// First segment of every token; also covered by the MAC.
pub const TOKEN_PREFIX: &str = "kgw3";
/// Longest accepted token (a real one is 113 characters); longer input is refused unread.
const MAX_TOKEN_LEN: usize = 256;
/// Random bytes in a nonce.
const NONCE_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Web3Error {
    #[error("the token is not a token issued by this gateway; get a new one with GET api_keys/generate_web3_key")]
    InvalidToken,
    #[error("the token has expired; get a new one with GET api_keys/generate_web3_key")]
    ExpiredToken,
    #[error("the signature must be 65 bytes of hex (r ‖ s ‖ v, v = 27/28 or 0/1)")]
    MalformedSignature,
    #[error("the signature is not a valid secp256k1 signature of the token")]
    InvalidSignature,
    #[error("`{0}` is not an Ethereum address (0x followed by 40 hex digits)")]
    MalformedAddress(String),
}

/// A 20-byte Ethereum address. Displayed in EIP-55 mixed-case checksum form; compared as
/// bytes, so `0xABC…` and `0xabc…` are the same address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 20]);

impl FromStr for Address {
    type Err = Web3Error;

    /// `0x` + 40 hex digits, any case. A mixed-case address is not checked against its
    /// EIP-55 checksum (wallets and the SDK send both forms); the signature proves it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || Web3Error::MalformedAddress(s.chars().take(64).collect());
        let digits = s
            .trim()
            .strip_prefix("0x")
            .or_else(|| s.trim().strip_prefix("0X"))
            .ok_or_else(malformed)?;
        if digits.len() != 40 {
            return Err(malformed());
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| malformed())?;
        Ok(Address(bytes))
    }
}

impl Address {
    /// The address of a secp256k1 public key: keccak256 of its uncompressed point without
    /// the `0x04` tag, last 20 bytes.
    pub fn of_key(key: &VerifyingKey) -> Address {
        let point = key.to_encoded_point(false);
        let hash = Keccak256::digest(&point.as_bytes()[1..]);
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&hash[12..]);
        Address(bytes)
    }

    /// EIP-55: a hex letter is upper-case when the matching nibble of keccak256(lower-case
    /// hex) is 8 or more.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.to_checksum())
    }
}

/// The EIP-191 `personal_sign` digest of `message`.
pub fn personal_sign_digest(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// The address whose key made `signature` (hex `r ‖ s ‖ v`) over `message` with
/// `personal_sign`. High-`s` signatures are accepted (normalised), as `ecrecover` does.
pub fn recover_personal_sign(message: &[u8], signature: &str) -> Result<Address, Web3Error> {
    let text = signature.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if text.len() != 130 {
        return Err(Web3Error::MalformedSignature);
    }
    let mut bytes = [0u8; 65];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| Web3Error::MalformedSignature)?;
    let v = match bytes[64] {
        v @ (27 | 28) => v - 27,
        v @ (0 | 1) => v,
        _ => return Err(Web3Error::MalformedSignature),
    };
    let mut signature =
        Signature::from_slice(&bytes[..64]).map_err(|_| Web3Error::InvalidSignature)?;
    let mut recovery = RecoveryId::from_byte(v).ok_or(Web3Error::MalformedSignature)?;
    if let Some(normalized) = signature.normalize_s() {
        // (r, n − s) is the same signature for the point with the other y parity.
        signature = normalized;
        recovery = RecoveryId::new(!recovery.is_y_odd(), recovery.is_x_reduced());
    }
    let digest = personal_sign_digest(message);
    let key = VerifyingKey::recover_from_prehash(&digest, &signature, recovery)
        .map_err(|_| Web3Error::InvalidSignature)?;
    Ok(Address::of_key(&key))
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// One-time id (hex); record it as used (`Store::consume_once_token`).
    pub nonce: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues and checks challenge tokens with one HMAC-SHA256 key (the `hmac` crate; its
/// `verify_slice` compares in constant time with `subtle`).
#[derive(Clone)]
pub struct TokenSigner {
    /// Keyed once; cloned for each token.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSigner([REDACTED])")
    }
}

impl TokenSigner {
    /// A signer keyed by the operator's secret (its SHA-256, so any length works).
    /// Instances sharing the secret accept each other's tokens.
    pub fn from_secret(secret: &[u8]) -> Self {
        TokenSigner::keyed(Sha256::digest(secret).into())
    }

    /// A signer with a random key from the OS CSPRNG.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        TokenSigner::keyed(key)
    }

    fn keyed(key: [u8; 32]) -> Self {
        // HMAC pads a key shorter than the hash's block with zeros (RFC 2104 §2), so the
        // key in a zeroed 64-byte block is the same key, and this constructor (unlike
        // `new_from_slice`) cannot fail.
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(&key);
        TokenSigner {
            mac: Hmac::new(&block.into()),
        }
    }

    fn mac_of(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac
    }

    /// One random signer per process, for deployments without a configured secret: its
    /// tokens are valid on this process only, and not after a restart.
    pub fn process_default() -> &'static TokenSigner {
        static SIGNER: OnceLock<TokenSigner> = OnceLock::new();
        SIGNER.get_or_init(TokenSigner::random)
    }

    /// A new token valid until `now + ttl` (whole seconds, rounded down).
    pub fn issue(&self, now: DateTime<Utc>, ttl: Duration) -> (String, TokenClaims) {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let expires_at = now
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let payload = format!("{TOKEN_PREFIX}.{nonce}.{}", expires_at.timestamp());
        let mac = hex::encode(self.mac_of(&payload).finalize().into_bytes());
        let expires_at = DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at);
        (
            format!("{payload}.{mac}"),
            TokenClaims { nonce, expires_at },
        )
    }

    /// The token's claims if this signer issued it and it has not expired at `now`. The
    /// MAC is checked first (in constant time), so an expired token is only reported as
    /// such when it is genuine.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<TokenClaims, Web3Error> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Web3Error::InvalidToken);
        }
        let (payload, mac) = token.rsplit_once('.').ok_or(Web3Error::InvalidToken)?;
        let mut given = [0u8; 32];
        hex::decode_to_slice(mac, &mut given).map_err(|_| Web3Error::InvalidToken)?;
        self.mac_of(payload)
            .verify_slice(&given)
            .map_err(|_| Web3Error::InvalidToken)?;
        let mut parts = payload.split('.');
        let (Some(TOKEN_PREFIX), Some(nonce), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Web3Error::InvalidToken);
        };
        let expires_at = exp
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or(Web3Error::InvalidToken)?;
        if expires_at <= now {
            return Err(Web3Error::ExpiredToken);
        }
        Ok(TokenClaims {
            nonce: nonce.to_string(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use k256::ecdsa::SigningKey;

    use super::*;

    /// Made with eth_account 0.14: `Account.sign_message(encode_defunct(text=MESSAGE), KEY)`.
    const KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    const ADDRESS: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
    const MESSAGE: &str = "kgw3.hello.1700000000.abc";
    const SIGNATURE: &str = "98a3084554688d8de255461eb36b935195b376c4acb60c9734a47242adf936de291a801e6ad51fc3809f27cc1ba637d10ca42eb146cd87fd0602c3f8c07fb6dd1b";

    #[test]
    fn token_macs_are_hmac_sha256_under_the_secrets_digest() {
        // The zero-padded block key (`TokenSigner::keyed`) is the same HMAC key as the
        // 32-byte digest itself.
        let signer = TokenSigner::from_secret(b"a configured secret");
        let (token, _) = signer.issue(Utc::now(), Duration::from_secs(60));
        let (payload, mac) = token.rsplit_once('.').unwrap();
        let mut reference =
            Hmac::<Sha256>::new_from_slice(&Sha256::digest(b"a configured secret")).unwrap();
        reference.update(payload.as_bytes());
        assert_eq!(mac, hex::encode(reference.finalize().into_bytes()));
    }

    #[test]
    fn addresses_parse_and_print_eip55() {
        let address: Address = ADDRESS.parse().unwrap();
        assert_eq!(address.to_string(), ADDRESS);
        let lower: Address = ADDRESS.to_ascii_lowercase().parse().unwrap();
        assert_eq!(lower, address);
        // EIP-55 reference vector.
        let vector: Address = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
            .parse()
            .unwrap();
        assert_eq!(
            vector.to_string(),
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        );
        for bad in [
            "",
            "0x",
            "2c7536E3605D9C16a7a3D7b1898e529396a65c23",
            "0x123",
            "0xzz7536E3605D9C16a7a3D7b1898e529396a65c23",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_derives_its_address() {
        let key = SigningKey::from_slice(&hex::decode(KEY).unwrap()).unwrap();
        assert_eq!(Address::of_key(key.verifying_key()).to_string(), ADDRESS);
    }

    #[test]
    fn recovers_an_eth_account_signature() {
        let expected: Address = ADDRESS.parse().unwrap();
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), SIGNATURE).unwrap(),
            expected
        );
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), &format!("0x{SIGNATURE}")).unwrap(),
            expected
        );
        // v as 0/1 instead of 27/28.
        let mut raw = hex::decode(SIGNATURE).unwrap();
        raw[64] -= 27;
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), &hex::encode(&raw)).unwrap(),
            expected
        );
        // Another message recovers another key.
        assert_ne!(
            recover_personal_sign(b"something else", SIGNATURE).ok(),
            Some(expected)
        );
    }

    #[test]
    fn high_s_signatures_recover_the_same_address() {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let digest = personal_sign_digest(MESSAGE.as_bytes());
        let (signature, recovery) = key.sign_prehash_recoverable(&digest).unwrap();
        let expected = Address::of_key(key.verifying_key());
        let mut raw = signature.to_vec();
        raw.push(27 + recovery.to_byte());
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), &hex::encode(&raw)).unwrap(),
            expected
        );
        // (r, n − s) with the other parity.
        let (r, s) = signature.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let mut raw = high.to_vec();
        raw.push(27 + (recovery.to_byte() ^ 1));
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), &hex::encode(&raw)).unwrap(),
            expected
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        for bad in [
            "",
            "0x",
            "zz",
            &SIGNATURE[..128],
            &format!("{}1d", &SIGNATURE[..128]),
        ] {
            assert_eq!(
                recover_personal_sign(MESSAGE.as_bytes(), bad),
                Err(Web3Error::MalformedSignature),
                "{bad}"
            );
        }
        let zeros = format!("{}1b", "00".repeat(64));
        assert_eq!(
            recover_personal_sign(MESSAGE.as_bytes(), &zeros),
            Err(Web3Error::InvalidSignature)
        );
    }

    #[test]
    fn tokens_verify_once_issued_and_until_they_expire() {
        let signer = TokenSigner::from_secret(b"a configured secret");
        let now = Utc::now();
        let (token, claims) = signer.issue(now, Duration::from_secs(60));
        assert!(token.starts_with("kgw3."));
        assert_eq!(signer.verify(&token, now).unwrap(), claims);
        assert_eq!(claims.nonce.len(), 32);
        assert_eq!(
            signer.verify(&token, now + chrono::Duration::seconds(61)),
            Err(Web3Error::ExpiredToken)
        );
        // Same secret, another instance: accepted. Another secret: refused.
        assert!(TokenSigner::from_secret(b"a configured secret")
            .verify(&token, now)
            .is_ok());
        assert_eq!(
            TokenSigner::random().verify(&token, now),
            Err(Web3Error::InvalidToken)
        );
        // Every tampering breaks the MAC.
        let (payload, mac) = token.rsplit_once('.').unwrap();
        let later = payload.replace(
            &claims.expires_at.timestamp().to_string(),
            &(claims.expires_at.timestamp() + 3600).to_string(),
        );
        for forged in [
            format!("{later}.{mac}"),
            format!("{payload}.{}", "0".repeat(64)),
            payload.to_string(),
            String::new(),
            "x".repeat(1000),
        ] {
            assert_eq!(
                signer.verify(&forged, now),
                Err(Web3Error::InvalidToken),
                "{forged}"
            );
        }
        let (other, other_claims) = signer.issue(now, Duration::from_secs(60));
        assert_ne!(other, token);
        assert_ne!(other_claims.nonce, claims.nonce);
    }
}
