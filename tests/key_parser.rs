//! The key parser (`keygate::keys::Token`) on generated and mutated input: it never
//! panics, accepts exactly the keys it generates and nothing one edit away from one
//! (the checksum's promise), and agrees with a reference written from the format's
//! description (`kg_` + 12 base62 + `_` + 36 base62 + 6 base62 of CRC-32).
//! `PROPTEST_CASES` raises the case count (docs/testing.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate::keys::{
    token::{CHECKSUM_LEN, LOOKUP_LEN, PREFIX, SECRET_LEN, TOKEN_LEN},
    Token, TokenError,
};
use proptest::prelude::*;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32 of `body` as six base62 digits, most significant first.
fn reference_checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits.to_vec()).unwrap()
}

/// The format's description, written independently of `Token::check`.
fn reference(presented: &str) -> Result<(), TokenError> {
    let key = presented.trim().as_bytes();
    let base62 = |bytes: &[u8]| bytes.iter().all(u8::is_ascii_alphanumeric);
    let shape = key.len() == TOKEN_LEN
        && key.starts_with(PREFIX.as_bytes())
        && base62(&key[PREFIX.len()..PREFIX.len() + LOOKUP_LEN])
        && key[PREFIX.len() + LOOKUP_LEN] == b'_'
        && base62(&key[PREFIX.len() + LOOKUP_LEN + 1..]);
    if !shape {
        return Err(TokenError::Shape);
    }
    let body_len = TOKEN_LEN - CHECKSUM_LEN;
    let body = std::str::from_utf8(&key[..body_len]).unwrap();
    if reference_checksum(body).as_bytes() != &key[body_len..] {
        return Err(TokenError::Checksum);
    }
    Ok(())
}

fn generated() -> impl Strategy<Value = String> {
    Just(()).prop_map(|()| Token::generate().expose().to_string())
}

/// A generated key with one to three bytes deleted, replaced or inserted.
fn mutated() -> impl Strategy<Value = String> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::sample::select(b"aZ09_-k g\t".to_vec()),
    );
    (generated(), proptest::collection::vec(edit, 1..4)).prop_map(|(key, edits)| {
        let mut bytes = key.into_bytes();
        for (at, kind, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 if at < bytes.len() => bytes[at] = byte,
                _ => bytes.insert(at, byte),
            }
        }
        String::from_utf8(bytes).unwrap()
    })
}

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(512))
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn generated_keys_parse_and_agree_with_the_reference(key in generated()) {
        prop_assert_eq!(reference(&key), Ok(()));
        let parsed = Token::parse(&key).unwrap();
        prop_assert_eq!(parsed.expose(), key.as_str());
        prop_assert_eq!(parsed.lookup_id(), &key[PREFIX.len()..PREFIX.len() + LOOKUP_LEN]);
        let padded = format!("  {key}\t");
        prop_assert_eq!(Token::check(&padded).ok(), Some(key.as_str()));
    }

    /// An edited key is refused (unless the edit was undone or only added spaces
    /// around it), and for the reference's reason.
    #[test]
    fn mutated_keys_are_refused_as_the_reference_refuses_them(key in mutated()) {
        prop_assert_eq!(Token::check(&key).map(|_| ()), reference(&key), "{:?}", key);
    }

    /// ASCII as a header carries it: any of it, never a panic, same verdict.
    #[test]
    fn any_header_value_is_judged_as_the_reference_judges_it(
        text in "kg_[ -~]{0,70}|[ -~]{0,70}",
    ) {
        prop_assert_eq!(Token::check(&text).map(|_| ()), reference(&text));
    }
}

#[test]
fn the_reference_checksum_is_the_parsers() {
    let key = Token::generate();
    let key = key.expose();
    let body = &key[..TOKEN_LEN - CHECKSUM_LEN];
    assert_eq!(reference_checksum(body), key[TOKEN_LEN - CHECKSUM_LEN..]);
    assert_eq!(
        SECRET_LEN,
        TOKEN_LEN - PREFIX.len() - LOOKUP_LEN - 1 - CHECKSUM_LEN
    );
}

/// Found by generating non-ASCII input: a 60-byte string whose 16th byte is inside a
/// character makes `Token::check` split it mid-character and panic. HTTP headers reach
/// the parser as visible ASCII only (both front doors check), but the bootstrap key
/// from the environment does not: non-ASCII input is refused as `Shape` before slicing.
#[test]
fn non_ascii_input_is_refused_without_a_panic() {
    let presented = format!(
        "kg_{}é{}",
        "a".repeat(11),
        "a".repeat(TOKEN_LEN - 3 - 11 - 2)
    );
    assert_eq!(presented.len(), TOKEN_LEN);
    assert_eq!(
        std::panic::catch_unwind(|| Token::check(&presented).map(|_| ())).ok(),
        Some(Err(TokenError::Shape))
    );
}
