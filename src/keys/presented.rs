//! How a client presents its key: the request headers that carry one, and how the key is
//! read from them. One list, read by authentication (which header holds the key), by the
//! proxy (never forward them upstream) and by the HTTP layer (never log them).

/// Headers that carry a client's key, lower-case, in the order they are read:
/// `Authorization: Bearer …` (OpenAI, Venice, ours) or `Authorization: Token …`
/// (aiXplain v1), then `x-api-key` or `x-aixplain-key` (aiXplain v2).
pub const KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-aixplain-key"];

/// The key presented in the first of [`KEY_HEADERS`] a request has. `text` gives a
/// header's value as text, however the headers are held.
pub fn presented_key<'a>(text: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    KEY_HEADERS.iter().find_map(|&name| {
        let value = text(name)?.trim();
        if name != "authorization" {
            return Some(value);
        }
        Some(
            ["Bearer ", "bearer ", "Token ", "token "]
                .iter()
                .find_map(|scheme| value.strip_prefix(scheme))
                .map_or(value, str::trim),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in<'a>(headers: &'a [(&'a str, &'a str)]) -> Option<&'a str> {
        presented_key(|name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, value)| *value)
        })
    }

    #[test]
    fn the_key_is_read_from_the_first_header_that_carries_one() {
        assert_eq!(key_in(&[("authorization", "Bearer  kg_1 ")]), Some("kg_1"));
        assert_eq!(key_in(&[("authorization", "token kg_2")]), Some("kg_2"));
        assert_eq!(key_in(&[("authorization", " kg_3")]), Some("kg_3"));
        assert_eq!(
            key_in(&[("x-aixplain-key", "kg_5"), ("x-api-key", " kg_4 ")]),
            Some("kg_4")
        );
        assert_eq!(
            key_in(&[("x-api-key", "kg_4"), ("authorization", "Bearer kg_1")]),
            Some("kg_1")
        );
        assert_eq!(key_in(&[("x-aixplain-key", "kg_5")]), Some("kg_5"));
        assert_eq!(key_in(&[("cookie", "kg_6")]), None);
    }
}
