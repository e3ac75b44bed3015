//! What WhatsApp messages cost: Meta prices each delivered template message by its pricing
//! category and the recipient's country (per-message pricing since July 2025), and reports the
//! category and whether it is billable on the status webhooks. The price list itself changes and
//! differs by contract, so it is configuration (`[costs]`), not code:
//!
//! ```toml
//! [costs]
//! currency = "USD"
//! [costs.rates.default]          # any country not listed
//! utility = 0.0034
//! marketing = 0.025
//! [costs.rates.55]               # by country calling code: Brazil
//! utility = 0.0068
//! ```
//!
//! A category missing from a country's table falls back to `default`'s; a message whose price
//! cannot be found is counted as unpriced, never as free.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The pricing categories Meta uses (lower case, as in the status webhooks).
pub const CATEGORIES: [&str; 5] = [
    "utility",
    "marketing",
    "authentication",
    "authentication_international",
    "service",
];

/// `[costs]`: the currency and the price of one billable message, by country calling code
/// (`"1"`, `"44"`, `"55"`...; `"default"` for the rest) and category.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateTable {
    /// ISO 4217 code the prices are in, shown next to every cost.
    pub currency: String,
    #[serde(default)]
    pub rates: BTreeMap<String, BTreeMap<String, f64>>,
}

impl RateTable {
    /// Every problem with the table (for `medrelay check`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = &self.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            out.push(format!(
                "costs.currency `{c}` must be an ISO 4217 code like USD or EUR"
            ));
        }
        for (country, prices) in &self.rates {
            let code_ok = country == "default"
                || (!country.is_empty()
                    && country.len() <= 3
                    && country.bytes().all(|b| b.is_ascii_digit())
                    && !country.starts_with('0'));
            if !code_ok {
                out.push(format!(
                    "costs.rates.{country}: a country calling code (1, 44, 55...) or `default`"
                ));
            }
            for (category, price) in prices {
                if !CATEGORIES.contains(&category.as_str()) {
                    out.push(format!(
                        "costs.rates.{country}.{category}: unknown pricing category (one of {})",
                        CATEGORIES.join(", ")
                    ));
                }
                if !price.is_finite() || *price < 0.0 {
                    out.push(format!(
                        "costs.rates.{country}.{category} must be a price of zero or more"
                    ));
                }
            }
        }
        out
    }

    /// The price of one billable message of `category` to a number with `calling_code`.
    pub fn price(&self, calling_code: Option<u16>, category: &str) -> Option<f64> {
        calling_code
            .and_then(|c| self.rates.get(&c.to_string()))
            .and_then(|p| p.get(category))
            .or_else(|| self.rates.get("default").and_then(|p| p.get(category)))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateTable {
        toml::from_str(
            r#"
            currency = "USD"
            [rates.default]
            utility = 0.004
            marketing = 0.025
            [rates.55]
            utility = 0.0068
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_country_price_beats_the_default_and_a_missing_one_falls_back() {
        let t = table();
        assert!(t.problems().is_empty(), "{:?}", t.problems());
        assert_eq!(t.price(Some(55), "utility"), Some(0.0068));
        assert_eq!(t.price(Some(55), "marketing"), Some(0.025));
        assert_eq!(t.price(Some(44), "utility"), Some(0.004));
        assert_eq!(t.price(None, "utility"), Some(0.004));
        assert_eq!(t.price(Some(55), "authentication"), None);
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let t: RateTable = toml::from_str(
            r#"
            currency = "dollars"
            [rates.plus44]
            utlity = -1.0
            "#,
        )
        .unwrap();
        let p = t.problems().join("\n");
        assert!(p.contains("costs.currency"), "{p}");
        assert!(
            p.contains("costs.rates.plus44: a country calling code"),
            "{p}"
        );
        assert!(p.contains("unknown pricing category"), "{p}");
        assert!(p.contains("must be a price of zero or more"), "{p}");
    }
}
