//! The secret format: `kg_<lookup>_<secret><checksum>`.
//!
//! - `lookup`: 12 base62 chars, public; finds the stored hash without scanning.
//! - `secret`: 36 base62 chars from the OS CSPRNG (≈214 bits).
//! - `checksum`: CRC-32 of everything before it, as 6 base62 chars. CRC-32 catches every
//!   single-character typo (an 8-bit burst), so a mistyped or truncated key is refused by
//!   `parse` before any store lookup or argon2 run, and secret scanners can recognise a
//!   real key by its shape and checksum.
//!
//! Parsing is pure: no I/O happens until the shape and checksum are right.

use std::fmt;

use rand::{rngs::OsRng, Rng};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "kg_";
pub const LOOKUP_LEN: usize = 12;
pub const SECRET_LEN: usize = 36;
pub const CHECKSUM_LEN: usize = 6;
/// `kg_` + lookup + `_` + secret + checksum.
pub const TOKEN_LEN: usize = PREFIX.len() + LOOKUP_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented string is not a keygate key. None of these touched the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a keygate key (expected kg_…)")]
    Shape,
    #[error("the key's checksum does not match (mistyped or truncated key)")]
    Checksum,
}

/// A full API key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Token {
    lookup_id: String,
    full: SecretString,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("lookup_id", &self.lookup_id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl Token {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut rng = OsRng;
        let lookup = random_base62(&mut rng, LOOKUP_LEN);
        let secret = random_base62(&mut rng, SECRET_LEN);
        let body = format!("{PREFIX}{lookup}_{secret}");
        let full = format!("{body}{}", checksum(&body));
        Token {
            lookup_id: lookup,
            full: SecretString::from(full),
        }
    }

    /// Checks shape and checksum. Pure: no I/O, no hashing.
    pub fn parse(presented: &str) -> Result<Self, TokenError> {
        let presented = Self::check(presented)?;
        let lookup = &presented[PREFIX.len()..PREFIX.len() + LOOKUP_LEN];
        Ok(Token {
            lookup_id: lookup.to_string(),
            full: SecretString::from(presented.to_string()),
        })
    }

    /// The presented key, trimmed, if it has a key's shape and checksum: what `parse`
    /// checks, without copying the secret (a cache hit needs only its digest).
    pub fn check(presented: &str) -> Result<&str, TokenError> {
        let presented = presented.trim();
        // ASCII first: the slices below are byte offsets, which a multi-byte character
        // could straddle (a panic on a bootstrap key read from the environment).
        if presented.len() != TOKEN_LEN || !presented.is_ascii() || !presented.starts_with(PREFIX) {
            return Err(TokenError::Shape);
        }
        let rest = &presented[PREFIX.len()..];
        let (lookup, tail) = rest.split_at(LOOKUP_LEN);
        let Some(tail) = tail.strip_prefix('_') else {
            return Err(TokenError::Shape);
        };
        if !lookup
            .bytes()
            .chain(tail.bytes())
            .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(TokenError::Shape);
        }
        let body_len = presented.len() - CHECKSUM_LEN;
        let (body, sum) = presented.split_at(body_len);
        if checksum(body) != sum {
            return Err(TokenError::Checksum);
        }
        Ok(presented)
    }

    pub fn lookup_id(&self) -> &str {
        &self.lookup_id
    }

    /// The whole key. Call only to show it once to its owner or to hash it.
    pub fn expose(&self) -> &str {
        self.full.expose_secret()
    }

    /// SHA-256 of the whole key: the in-memory cache index (DESIGN §8). It covers the
    /// secret, not just the lookup id, so a cache hit proves possession of the secret.
    pub fn digest(&self) -> [u8; 32] {
        digest(self.expose())
    }

    /// `kg_<lookup>…<last4>`: shown in lists instead of the key.
    pub fn partial(&self) -> String {
        let full = self.expose();
        format!("{PREFIX}{}…{}", self.lookup_id, &full[full.len() - 4..])
    }

    /// The last six characters (the Venice SDK's `last6Chars`).
    pub fn last6(&self) -> String {
        let full = self.expose();
        full[full.len() - 6..].to_string()
    }
}

fn random_base62(rng: &mut impl Rng, len: usize) -> String {
    // `gen_range` is uniform (rejection sampling), so every character carries log2(62) bits.
    (0..len)
        .map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())]))
        .collect()
}

fn checksum(body: &str) -> String {
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// [`Token::digest`] of a key already [checked](Token::check).
pub fn digest(checked: &str) -> [u8; 32] {
    Sha256::digest(checked.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_parse() {
        for _ in 0..200 {
            let token = Token::generate();
            let parsed = Token::parse(token.expose()).expect("a generated key parses");
            assert_eq!(parsed.lookup_id(), token.lookup_id());
            assert_eq!(parsed.expose(), token.expose());
            assert_eq!(parsed.digest(), token.digest());
            assert_eq!(token.expose().len(), TOKEN_LEN);
            assert!(token.expose().starts_with("kg_"));
        }
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        let token = Token::generate();
        let key = token.expose().to_string();
        for position in PREFIX.len()..key.len() {
            if key.as_bytes()[position] == b'_' {
                continue;
            }
            for &replacement in BASE62.iter() {
                if replacement == key.as_bytes()[position] {
                    continue;
                }
                let mut typo = key.clone().into_bytes();
                typo[position] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                assert!(
                    Token::parse(&typo).is_err(),
                    "typo at {position} ({}) was accepted",
                    char::from(replacement)
                );
            }
        }
    }

    #[test]
    fn garbage_is_refused_by_shape() {
        for garbage in [
            "",
            "kg_",
            "sk-proj-abc",
            "Bearer kg_x",
            &"kg_".repeat(20),
            "kg_abcdefghijkl-abcdefghijklmnopqrstuvwxyzABCDEFGHIJ123456",
            "kg_abcdefghijkl_abcdefghijklmnopqrstuvwxyzABCDEFGHI!123456",
            "kg_ab€defghijk_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ123456",
        ] {
            assert_eq!(
                Token::parse(garbage).unwrap_err(),
                TokenError::Shape,
                "{garbage}"
            );
        }
    }

    #[test]
    fn truncated_or_extended_keys_are_refused() {
        let key = Token::generate().expose().to_string();
        assert!(Token::parse(&key[..key.len() - 1]).is_err());
        assert!(Token::parse(&format!("{key}a")).is_err());
    }

    #[test]
    fn debug_and_partial_never_show_the_secret() {
        let token = Token::generate();
        let secret_part = &token.expose()[PREFIX.len() + LOOKUP_LEN + 1..TOKEN_LEN - CHECKSUM_LEN];
        let debug = format!("{token:?}");
        assert!(debug.contains("[REDACTED]"));
        assert!(!debug.contains(secret_part));
        assert!(!token.partial().contains(secret_part));
        assert!(token
            .partial()
            .starts_with(&format!("kg_{}…", token.lookup_id())));
        assert_eq!(token.last6().len(), 6);
    }

    #[test]
    fn keys_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(Token::generate().expose().to_string()));
        }
    }
}
