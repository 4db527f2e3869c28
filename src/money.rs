//! Money is an exact decimal everywhere (no floats). On the wire a USD amount is a JSON
//! number (what every SDK sends); it is parsed from its decimal text, never through f64,
//! so `0.1` stays exactly 0.1.

use rust_decimal::Decimal;

/// Smallest stored unit of money: 1 pico-USD (1e-12 USD). Costs are summed in the stores as
/// 64-bit integers of this unit, exact for any price with up to six decimals per million
/// tokens; the largest total one sum can hold is about 9.2 million USD.
pub const PICO_PER_USD: i64 = 1_000_000_000_000;

/// USD → pico-USD, rounding half away from zero below the pico.
pub fn usd_to_pico(usd: Decimal) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    (usd * Decimal::from(PICO_PER_USD))
        .round()
        .to_i64()
        .unwrap_or(i64::MAX)
}

pub fn pico_to_usd(pico: i64) -> Decimal {
    Decimal::from(pico) / Decimal::from(PICO_PER_USD)
}

pub mod usd {
    use std::str::FromStr;

    use rust_decimal::{
        prelude::{FromPrimitive, ToPrimitive},
        Decimal,
    };
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        // f64's shortest representation of a decimal with few digits prints back the same digits.
        s.serialize_f64(value.to_f64().unwrap_or(f64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let text = match &value {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => return Err(D::Error::custom("expected a USD amount (a number)")),
        };
        let amount = Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
            .ok()
            // A number with more decimals than `Decimal` keeps (`8.7e-206`) is rounded to
            // what it keeps (28 places), as any JSON reader rounds numbers to its own type.
            .or_else(|| match &value {
                serde_json::Value::Number(n) => n.as_f64().and_then(Decimal::from_f64),
                _ => None,
            })
            .ok_or_else(|| D::Error::custom(format!("`{text}` is not a USD amount")))?;
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(D::Error::custom("a USD amount must be >= 0"));
        }
        Ok(amount)
    }

    /// An optional USD amount (absent: `None`; `#[serde(default)]` goes with it).
    pub mod option {
        use rust_decimal::Decimal;
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Like `usd`, for amounts that may be negative (what remains of an overspent budget).
pub mod signed_usd {
    use rust_decimal::{prelude::ToPrimitive, Decimal};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.to_f64().unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;

    #[derive(Debug, serde::Deserialize)]
    struct Amount {
        #[serde(with = "super::usd")]
        usd: Decimal,
    }

    fn read(json: &str) -> Result<Decimal, serde_json::Error> {
        serde_json::from_str::<Amount>(json).map(|a| a.usd)
    }

    #[test]
    fn amounts_beyond_decimal_precision_are_rounded_not_refused() {
        // Found by schemathesis: a valid JSON number was refused as "not a USD amount".
        assert_eq!(
            read(r#"{"usd": 8.693357400746478e-206}"#).unwrap(),
            Decimal::ZERO
        );
        assert_eq!(
            read(r#"{"usd": 25.5}"#).unwrap(),
            Decimal::from_str("25.5").unwrap()
        );
        assert_eq!(
            read(r#"{"usd": "0.000034"}"#).unwrap(),
            Decimal::from_str("0.000034").unwrap()
        );
        assert!(read(r#"{"usd": -1}"#).is_err());
        assert!(read(r#"{"usd": "tiny"}"#).is_err());
    }
}
