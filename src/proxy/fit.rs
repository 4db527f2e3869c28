//! `max_tokens` fitted to what a key has left (issue 14 §4; docs/decisions.md, "max_tokens
//! fitted to what is left"). On a key with `fit_max_tokens`, a request refused only by a
//! token bucket (tpm/tpd) or by money (the key's budget, the workspace's credits) is
//! admitted again with a smaller completion cap: the largest count every limit has room
//! for, when that is at least `proxy.min_fitted_tokens`. Admission (`admission.rs`) asks
//! this file how much room a refusal leaves ([`room_in_buckets`], [`room_in_money`]);
//! `Gateway::walk` writes the cap into the body ([`with_cap`]) and names it in the answer
//! ([`FITTED_HEADER`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::request::{slice_range, RequestFields};
use crate::{
    keys::model::TokenType,
    limits::{BucketState, Charge},
    usage::pricing::Pricing,
};

/// The answer's header giving the cap a request was fitted to.
pub const FITTED_HEADER: &str = "x-keygate-max-tokens-fitted";

/// The largest completion every bucket of `charges` (whose states before the refused
/// charge are `states`, in the same order) has room for, with `input` prompt tokens.
/// `None` when no completion helps: a request bucket (rpm/rpd) is empty, or a bucket
/// counting input tokens has no room for the prompt. A bucket admits `n` units while
/// `n ≤ remaining` (`gcra.rs`: remaining is rounded down), so that is the bound.
pub(super) fn room_in_buckets(
    charges: &[Charge],
    states: &[BucketState],
    input: u64,
) -> Option<u64> {
    let mut room = u64::MAX;
    for (charge, state) in charges.iter().zip(states) {
        let left = u64::try_from(state.remaining).unwrap_or(0);
        let fits = match charge.token_type {
            // A request takes one unit whatever its size: fitting cannot help.
            None if left == 0 => return None,
            None => continue,
            // An empty charge is checked as one unit (`Bucket::charge`).
            Some(TokenType::Input) if input.max(1) > left => return None,
            Some(TokenType::Input) => continue,
            Some(TokenType::Output) => left,
            Some(TokenType::Total) => left.checked_sub(input)?,
        };
        room = room.min(fits);
    }
    Some(room)
}

/// The largest completion of at most `cap` tokens that, with `input` prompt tokens of
/// `model`, costs no more than `left_pico`; `None` when even the prompt alone costs more.
/// Cost grows with the count, so a binary search finds it whatever the price's form.
pub(super) fn room_in_money(
    pricing: &Pricing,
    model: &str,
    input: u64,
    cap: u64,
    left_pico: i64,
) -> Option<u64> {
    let cost = |output: u64| {
        pricing.cost_pico(
            model,
            super::saturating_i64(input),
            super::saturating_i64(output),
        )
    };
    if cost(0) > left_pico {
        return None;
    }
    let (mut fits, mut over) = (0u64, cap.saturating_add(1));
    if cost(cap) <= left_pico {
        return Some(cap);
    }
    // Invariant: cost(fits) ≤ left < cost(over).
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if cost(mid) <= left_pico {
            fits = mid;
        } else {
            over = mid;
        }
    }
    Some(fits)
}

/// `body` with its completion cap set to `cap`: the member the request used
/// (`max_completion_tokens`, else `max_tokens`) and any other of the two above `cap` are
/// rewritten in place, the rest passed on byte for byte; without either, `"max_tokens"`
/// is added as the first member. `None` when `body` is not a JSON object.
pub fn with_cap(body: &Bytes, fields: &RequestFields<'_>, cap: u64) -> Option<Bytes> {
    let number = itoa::Buffer::new().format(cap).as_bytes().to_vec();
    let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    for raw in [fields.max_completion_tokens, fields.max_tokens]
        .into_iter()
        .flatten()
    {
        // A smaller cap the client set stands (the other member is the one that counted).
        if serde_json::from_str::<u64>(raw.get()).is_ok_and(|asked| asked <= cap) {
            continue;
        }
        edits.push((slice_range(body, raw)?, number.clone()));
    }
    if fields.max_completion_tokens.is_none() && fields.max_tokens.is_none() {
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' {
            return None;
        }
        let empty = body[open + 1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'}');
        let mut member = br#""max_tokens":"#.to_vec();
        member.extend_from_slice(&number);
        if !empty {
            member.push(b',');
        }
        edits.push((open + 1..open + 1, member));
    }
    edits.sort_by_key(|(at, _)| at.start);
    let mut out = BytesMut::with_capacity(body.len() + 32);
    let mut from = 0;
    for (at, with) in edits {
        out.put_slice(body.get(from..at.start)?);
        out.put_slice(&with);
        from = at.end;
    }
    out.put_slice(body.get(from..)?);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::{
        config::ModelPrice,
        limits::{BucketKey, LimitKind, Scope},
    };

    fn bucket(
        kind: LimitKind,
        token_type: Option<TokenType>,
        remaining: i64,
    ) -> (Charge, BucketState) {
        let charge = Charge {
            bucket: BucketKey {
                kind,
                scope: Scope::Global,
                key_id: Uuid::nil(),
            },
            limit: 100,
            amount: 0,
            token_type,
        };
        let state = BucketState {
            kind,
            scope: Scope::Global,
            limit: 100,
            remaining,
            reset_after: Duration::ZERO,
        };
        (charge, state)
    }

    fn room(buckets: &[(Charge, BucketState)], input: u64) -> Option<u64> {
        let (charges, states): (Vec<_>, Vec<_>) = buckets.iter().cloned().unzip();
        room_in_buckets(&charges, &states, input)
    }

    #[test]
    fn the_tightest_token_bucket_decides() {
        let total = bucket(LimitKind::Tpm, Some(TokenType::Total), 50);
        let output = bucket(LimitKind::Tpd, Some(TokenType::Output), 30);
        let rpm = bucket(LimitKind::Rpm, None, 3);
        assert_eq!(room(std::slice::from_ref(&total), 10), Some(40));
        assert_eq!(room(&[total.clone(), output.clone(), rpm], 10), Some(30));
        assert_eq!(room(&[total], 60), None, "the prompt alone does not fit");
        assert_eq!(
            room(&[output], 1_000),
            Some(30),
            "output buckets ignore the prompt"
        );
    }

    #[test]
    fn request_buckets_and_input_buckets_cannot_be_fitted() {
        let tpm = bucket(LimitKind::Tpm, Some(TokenType::Total), 50);
        assert_eq!(
            room(&[tpm.clone(), bucket(LimitKind::Rpm, None, 0)], 10),
            None
        );
        let input = bucket(LimitKind::Tpm, Some(TokenType::Input), 5);
        assert_eq!(room(std::slice::from_ref(&input), 10), None);
        assert_eq!(room(&[input, tpm], 5), Some(45));
        let in_debt = bucket(LimitKind::Tpm, Some(TokenType::Output), -20);
        assert_eq!(room(&[in_debt], 0), Some(0));
    }

    #[test]
    fn money_room_is_the_largest_count_within_what_is_left() {
        let pricing = Pricing::from_config(&[ModelPrice {
            name: "m".into(),
            input_usd_per_mtok: "1".parse().unwrap_or_default(),
            output_usd_per_mtok: "2".parse().unwrap_or_default(),
            cache_creation_input_usd_per_mtok: None,
            cache_read_input_usd_per_mtok: None,
        }]);
        // 1 µUSD per input token, 2 per output token; 10 input tokens cost 10 µUSD.
        let micro = 1_000_000;
        assert_eq!(
            room_in_money(&pricing, "m", 10, 1_000, 30 * micro),
            Some(10)
        );
        assert_eq!(
            room_in_money(&pricing, "m", 10, 1_000, 31 * micro),
            Some(10)
        );
        assert_eq!(
            room_in_money(&pricing, "m", 10, 1_000, 32 * micro),
            Some(11)
        );
        assert_eq!(room_in_money(&pricing, "m", 10, 5, 32 * micro), Some(5));
        assert_eq!(room_in_money(&pricing, "m", 10, 1_000, 9 * micro), None);
        assert_eq!(room_in_money(&pricing, "free", 10, 1_000, 0), Some(1_000));
    }

    fn capped(body: &str, cap: u64) -> String {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let fields = RequestFields::parse(&bytes).unwrap_or_default();
        let out = with_cap(&bytes, &fields, cap).unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_cap_replaces_the_member_the_client_used() {
        assert_eq!(
            capped(r#"{"model":"m", "max_tokens": 500, "n":1}"#, 40),
            r#"{"model":"m", "max_tokens": 40, "n":1}"#
        );
        assert_eq!(
            capped(r#"{"max_completion_tokens":500,"max_tokens":20}"#, 40),
            r#"{"max_completion_tokens":40,"max_tokens":20}"#
        );
        assert_eq!(
            capped(r#"{"max_completion_tokens":500,"max_tokens":900}"#, 40),
            r#"{"max_completion_tokens":40,"max_tokens":40}"#
        );
        assert_eq!(
            capped(r#" {"model":"m"}"#, 40),
            r#" {"max_tokens":40,"model":"m"}"#
        );
        assert_eq!(capped(r#"{ }"#, 40), r#"{"max_tokens":40 }"#);
        assert_eq!(capped(r#"{"max_tokens":null}"#, 40), r#"{"max_tokens":40}"#);
    }
}
