//! Model prices from config (`[[models]]`) and the exact cost of a request:
//! `tokens × usd_per_mtok / 1e6`, computed in `Decimal` and rounded once, half-up, to the
//! pico-USD (`money::PICO_PER_USD`). No floats anywhere (DESIGN §4).

use foldhash::{HashMap, HashMapExt};

use rust_decimal::{prelude::ToPrimitive, Decimal, RoundingStrategy};

use crate::config::ModelPrice;

/// pico-USD per (USD per million tokens): 1e12 / 1e6.
const PICO_PER_USD_PER_TOKEN_PER_MTOK: i64 = 1_000_000;

/// The configured price list, looked up by exact model name.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    models: HashMap<String, Priced>,
}

#[derive(Debug, Clone)]
struct Priced {
    price: ModelPrice,
    /// USD per million tokens of each kind: input, output, cache writes, cache reads
    /// (the cache prices default to the input price).
    rates: [Decimal; 4],
    /// The same in whole pico-USD per token, when every price is whole in pico (at most 6
    /// decimals per million tokens): the cost is then exact integer arithmetic.
    pico_per_token: Option<[i64; 4]>,
}

/// A request's tokens by price: `input` is the uncached prompt only (Anthropic's
/// `input_tokens`); cache writes and reads are priced apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PricedTokens {
    pub input: i64,
    pub output: i64,
    pub cache_creation: i64,
    pub cache_read: i64,
}

impl PricedTokens {
    fn counts(self) -> [i64; 4] {
        [
            self.input,
            self.output,
            self.cache_creation,
            self.cache_read,
        ]
    }
}

/// `usd_per_mtok` in pico-USD per token, if that is a whole number that fits.
fn whole_pico_per_token(usd_per_mtok: Decimal) -> Option<i64> {
    let pico = usd_per_mtok.checked_mul(Decimal::from(PICO_PER_USD_PER_TOKEN_PER_MTOK))?;
    (pico.fract().is_zero() && !pico.is_sign_negative()).then(|| pico.to_i64())?
}

impl Pricing {
    /// Builds the table. Config validation already rejects duplicate names; should one slip
    /// through, the first entry wins.
    pub fn from_config(models: &[ModelPrice]) -> Self {
        let mut table = HashMap::with_capacity(models.len());
        for price in models {
            table.entry(price.name.clone()).or_insert_with(|| {
                let input = price.input_usd_per_mtok;
                let rates = [
                    input,
                    price.output_usd_per_mtok,
                    price.cache_creation_input_usd_per_mtok.unwrap_or(input),
                    price.cache_read_input_usd_per_mtok.unwrap_or(input),
                ];
                let whole = rates.map(whole_pico_per_token);
                Priced {
                    price: price.clone(),
                    rates,
                    pico_per_token: whole
                        .iter()
                        .all(Option::is_some)
                        .then(|| whole.map(Option::unwrap_or_default)),
                }
            });
        }
        Pricing { models: table }
    }

    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model).map(|priced| &priced.price)
    }

    /// True when requests to `model` cannot cost anything: it has no configured price, or
    /// all its prices are zero.
    pub fn is_free(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_none_or(|p| p.rates.iter().all(Decimal::is_zero))
    }

    /// Exact cost in pico-USD: `(input × input_price + output × output_price) / 1e6` USD,
    /// rounded half-up at the pico (once, on the sum). Negative token counts count as 0.
    ///
    /// A model without a configured price costs 0. That is deliberate (PEERS §2.12): local
    /// or unpriced models must never be blocked by a budget, and a budget gate fed a 0
    /// estimate admits (see `usage::budget`). A result beyond `i64` saturates at `i64::MAX`.
    pub fn cost_pico(&self, model: &str, input_tokens: i64, output_tokens: i64) -> i64 {
        self.cost_pico_tokens(
            model,
            PricedTokens {
                input: input_tokens,
                output: output_tokens,
                ..PricedTokens::default()
            },
        )
    }

    /// [`Pricing::cost_pico`] with prompt-cache tokens priced at their own rates.
    pub fn cost_pico_tokens(&self, model: &str, tokens: PricedTokens) -> i64 {
        let Some(Priced {
            rates,
            pico_per_token,
            ..
        }) = self.models.get(model)
        else {
            return 0;
        };
        let counts = tokens.counts();
        if let Some(pico_per_token) = pico_per_token {
            // Whole numbers: nothing to round, and i128 cannot overflow on four i64 × i64.
            let pico: i128 = counts
                .iter()
                .zip(pico_per_token)
                .map(|(count, pico)| i128::from((*count).max(0)) * i128::from(*pico))
                .sum();
            return i64::try_from(pico).unwrap_or(i64::MAX);
        }
        let mut sum = Some(Decimal::ZERO);
        for (count, rate) in counts.iter().zip(rates) {
            sum = sum.and_then(|sum| {
                Decimal::from((*count).max(0))
                    .checked_mul(*rate)
                    .and_then(|cost| sum.checked_add(cost))
            });
        }
        sum.and_then(|sum| sum.checked_mul(Decimal::from(PICO_PER_USD_PER_TOKEN_PER_MTOK)))
            .map(|pico| pico.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
            .and_then(|pico| pico.to_i64())
            .unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn price(name: &str, input: &str, output: &str) -> ModelPrice {
        ModelPrice {
            name: name.to_string(),
            input_usd_per_mtok: Decimal::from_str(input).unwrap(),
            output_usd_per_mtok: Decimal::from_str(output).unwrap(),
            cache_creation_input_usd_per_mtok: None,
            cache_read_input_usd_per_mtok: None,
        }
    }

    fn pricing() -> Pricing {
        Pricing::from_config(&[
            price("gpt-4o-mini", "0.15", "0.60"),
            price("gpt-4o", "2.50", "10"),
            price("tiny", "0.0000025", "0.0000015"),
            price("local-free", "0", "0"),
        ])
    }

    #[test]
    fn exact_costs() {
        let p = pricing();
        // 1234 × 0.15 / 1e6 USD = 0.0001851 USD
        assert_eq!(p.cost_pico("gpt-4o-mini", 1234, 0), 185_100_000);
        // 1000 × 0.60 / 1e6 USD = 0.0006 USD
        assert_eq!(p.cost_pico("gpt-4o-mini", 0, 1000), 600_000_000);
        assert_eq!(p.cost_pico("gpt-4o-mini", 1234, 1000), 785_100_000);
        // 1M input + 1M output of gpt-4o = 12.50 USD
        assert_eq!(
            p.cost_pico("gpt-4o", 1_000_000, 1_000_000),
            12_500_000_000_000
        );
        assert_eq!(p.cost_pico("gpt-4o", 1, 1), 12_500_000);
        assert_eq!(p.cost_pico("gpt-4o", 0, 0), 0);
    }

    #[test]
    fn whole_pico_prices_cost_the_same_as_the_decimal_computation() {
        let p = pricing();
        assert!(p.models["gpt-4o-mini"].pico_per_token.is_some());
        assert!(
            p.models["tiny"].pico_per_token.is_none(),
            "2.5 pico per token"
        );
        let decimal_only = Pricing {
            models: p
                .models
                .iter()
                .map(|(name, priced)| {
                    let mut priced = priced.clone();
                    priced.pico_per_token = None;
                    (name.clone(), priced)
                })
                .collect(),
        };
        for model in ["gpt-4o-mini", "gpt-4o", "local-free", "unknown"] {
            for (input, output) in [(0, 0), (1, 1), (1234, 987), (-5, 3), (i64::MAX, i64::MAX)] {
                assert_eq!(
                    p.cost_pico(model, input, output),
                    decimal_only.cost_pico(model, input, output),
                    "{model} {input} {output}"
                );
            }
        }
    }

    #[test]
    fn rounds_half_up_at_the_pico_once() {
        let p = pricing();
        // 1 × 0.0000025 / 1e6 USD = 2.5 pico → 3 (banker's rounding would give 2)
        assert_eq!(p.cost_pico("tiny", 1, 0), 3);
        // 1.5 pico → 2
        assert_eq!(p.cost_pico("tiny", 0, 1), 2);
        // rounded on the sum: 2.5 + 1.5 = 4.0, not 3 + 2
        assert_eq!(p.cost_pico("tiny", 1, 1), 4);
        // 3 × 2.5 = 7.5 → 8
        assert_eq!(p.cost_pico("tiny", 3, 0), 8);
    }

    #[test]
    fn unpriced_models_are_free() {
        let p = pricing();
        assert_eq!(p.cost_pico("llama-local", 1_000_000, 1_000_000), 0);
        assert!(p.price("llama-local").is_none());
        assert!(p.is_free("llama-local"));
        assert!(p.is_free("local-free"));
        assert!(!p.is_free("gpt-4o-mini"));
        assert_eq!(
            p.price("gpt-4o-mini").unwrap().output_usd_per_mtok,
            Decimal::from_str("0.6").unwrap()
        );
    }

    #[test]
    fn negative_and_huge_token_counts() {
        let p = pricing();
        assert_eq!(p.cost_pico("gpt-4o-mini", -5, -5), 0);
        assert_eq!(p.cost_pico("gpt-4o", i64::MAX, i64::MAX), i64::MAX);
    }

    #[test]
    fn cache_tokens_have_their_own_prices_or_the_input_price() {
        let mut claude = price("claude", "3", "15");
        claude.cache_creation_input_usd_per_mtok = Some(Decimal::from_str("3.75").unwrap());
        claude.cache_read_input_usd_per_mtok = Some(Decimal::from_str("0.3").unwrap());
        let p = Pricing::from_config(&[claude, price("plain", "3", "15")]);
        let tokens = PricedTokens {
            input: 100,
            output: 10,
            cache_creation: 1000,
            cache_read: 2000,
        };
        // 100 × 3 + 10 × 15 + 1000 × 3.75 + 2000 × 0.3 = 4800 µUSD
        assert_eq!(p.cost_pico_tokens("claude", tokens), 4_800_000_000);
        // Unset cache prices are the input price: 3100 × 3 + 10 × 15 = 9450 µUSD
        assert_eq!(p.cost_pico_tokens("plain", tokens), 9_450_000_000);
        assert_eq!(p.cost_pico("claude", 100, 10), 450_000_000);
    }
}
