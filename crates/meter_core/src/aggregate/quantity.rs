//! Exact quantities: fixed-point integers with 9 decimal places in an `i128`.
//!
//! Why not `rust_decimal` all the way: its arithmetic silently rounds once a 96-bit mantissa fills up,
//! and billing cannot accept a silently rounded sum. With a fixed scale every sum is plain integer
//! addition, exact or an explicit overflow, and the value maps one-to-one onto Arrow's `Decimal128(38, 9)`.
//! `rust_decimal` still does the parsing of decimal text and JSON numbers (exponents included).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Decimal places kept for every value.
pub const SCALE: u32 = 9;
const ONE: i128 = 1_000_000_000;
/// The largest magnitude one event may carry (10^18), so that a minute bucket of even a hundred million
/// such events stays far from `i128`'s limit; a query sum past the limit is reported, never wrapped.
pub const MAX_EVENT_VALUE: i128 = 1_000_000_000_000_000_000 * ONE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(pub i128);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantityError {
    NotANumber,
    TooPrecise,
    OutOfRange,
}

impl QuantityError {
    pub fn describe(&self) -> &'static str {
        match self {
            QuantityError::NotANumber => "is not a decimal number",
            QuantityError::TooPrecise => "has more than 9 decimal places",
            QuantityError::OutOfRange => "is larger in magnitude than 10^18",
        }
    }
}

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    pub fn from_int(n: i64) -> Quantity {
        Quantity(n as i128 * ONE)
    }

    /// Parses JSON number text or a decimal string: `12`, `-0.5`, `1.25e3`, `"1e-9"` (quotes removed).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let text = text.trim();
        if text.is_empty() || text.len() > 64 {
            return Err(QuantityError::NotANumber);
        }
        // Most usage values are plain integers (tokens, requests): skip the general decimal parser.
        let digits = text.strip_prefix('-').unwrap_or(text);
        if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = text.parse().map_err(|_| QuantityError::NotANumber)?;
            return Ok(Quantity(n as i128 * ONE));
        }
        let parsed = if text.bytes().any(|b| b == b'e' || b == b'E') {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        };
        let d = parsed.map_err(|_| QuantityError::NotANumber)?.normalize();
        if d.scale() > SCALE {
            return Err(QuantityError::TooPrecise);
        }
        let scaled = d.mantissa() * 10i128.pow(SCALE - d.scale());
        if scaled.abs() > MAX_EVENT_VALUE {
            return Err(QuantityError::OutOfRange);
        }
        Ok(Quantity(scaled))
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.0.checked_add(other.0).map(Quantity)
    }

    /// `self / n`, rounded half to even at the 9th decimal place (used by `avg`).
    pub fn div_round_half_even(self, n: u64) -> Quantity {
        let n = n as i128;
        let (q, r) = (self.0 / n, self.0 % n);
        let twice = r.abs() * 2;
        let away = twice > n || (twice == n && q % 2 != 0);
        Quantity(if away { q + self.0.signum() } else { q })
    }
}

impl fmt::Display for Quantity {
    /// Shortest exact decimal text: `12`, `-0.5`, `0.000000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (int, frac) = (abs / ONE as u128, abs % ONE as u128);
        if frac == 0 {
            return write!(f, "{sign}{int}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{sign}{int}.{}", digits.trim_end_matches('0'))
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_json_numbers_and_decimal_strings() {
        assert_eq!(Quantity::parse("12").unwrap(), Quantity::from_int(12));
        assert_eq!(Quantity::parse("-0.5").unwrap(), Quantity(-500_000_000));
        assert_eq!(Quantity::parse("1.25e3").unwrap(), Quantity::from_int(1250));
        assert_eq!(Quantity::parse("1E+2").unwrap(), Quantity::from_int(100));
        assert_eq!(Quantity::parse("1e-9").unwrap(), Quantity(1));
        assert_eq!(Quantity::parse("0.100000000000").unwrap(), Quantity(100_000_000));
    }

    #[test]
    fn rejects_what_cannot_be_exact() {
        assert_eq!(Quantity::parse("1e-10"), Err(QuantityError::TooPrecise));
        assert_eq!(Quantity::parse("0.0000000001"), Err(QuantityError::TooPrecise));
        assert_eq!(Quantity::parse("1e400"), Err(QuantityError::NotANumber));
        assert_eq!(Quantity::parse("1000000000000000001"), Err(QuantityError::OutOfRange));
        for bad in ["", "abc", "1.2.3", "NaN", "Infinity", "0x10", "1,5"] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::NotANumber), "{bad}");
        }
    }

    #[test]
    fn displays_shortest_exact_text() {
        assert_eq!(Quantity(1).to_string(), "0.000000001");
        assert_eq!(Quantity(-1_500_000_000).to_string(), "-1.5");
        assert_eq!(Quantity::from_int(7).to_string(), "7");
        assert_eq!(Quantity(i128::MIN).to_string(), "-170141183460469231731687303715.884105728");
    }

    #[test]
    fn average_rounds_half_to_even() {
        assert_eq!(Quantity(5).div_round_half_even(2), Quantity(2));
        assert_eq!(Quantity(7).div_round_half_even(2), Quantity(4));
        assert_eq!(Quantity(-5).div_round_half_even(2), Quantity(-2));
        assert_eq!(Quantity(10).div_round_half_even(3), Quantity(3));
        assert_eq!(Quantity(20).div_round_half_even(3), Quantity(7));
    }

    #[test]
    fn overflow_is_reported_not_wrapped() {
        assert_eq!(Quantity(i128::MAX).checked_add(Quantity(1)), None);
    }

    proptest! {
        #[test]
        fn integer_fast_path_agrees_with_the_decimal_parser(n in -999_999_999_999_999_999i64..=999_999_999_999_999_999) {
            let text = n.to_string();
            let general = Decimal::from_str_exact(&text).unwrap();
            prop_assert_eq!(Quantity::parse(&text).unwrap().0, general.mantissa() * ONE);
        }

        #[test]
        fn text_round_trips(v in -MAX_EVENT_VALUE..=MAX_EVENT_VALUE) {
            let q = Quantity(v);
            prop_assert_eq!(Quantity::parse(&q.to_string()).unwrap(), q);
        }

        #[test]
        fn addition_is_exact_and_associative(a in -MAX_EVENT_VALUE..MAX_EVENT_VALUE, b in -MAX_EVENT_VALUE..MAX_EVENT_VALUE,
                                             c in -MAX_EVENT_VALUE..MAX_EVENT_VALUE) {
            let (a, b, c) = (Quantity(a), Quantity(b), Quantity(c));
            let left = a.checked_add(b).unwrap().checked_add(c).unwrap();
            let right = a.checked_add(b.checked_add(c).unwrap()).unwrap();
            prop_assert_eq!(left, right);
            prop_assert_eq!(left.0, a.0 + b.0 + c.0);
        }

        #[test]
        fn average_is_within_half_an_ulp(sum in -MAX_EVENT_VALUE..MAX_EVENT_VALUE, n in 1u64..1_000_000) {
            let avg = Quantity(sum).div_round_half_even(n);
            let err = (avg.0 * n as i128 - sum).abs();
            prop_assert!(err * 2 <= n as i128);
        }
    }
}
