//! Cost in US dollars from the `[[prices]]` table.

use crate::config::Price;
use quarry_schemas::Usage;
use std::collections::HashMap;

/// Prices by (provider, model).
pub(super) struct PriceTable(HashMap<(String, String), Price>);

impl PriceTable {
    pub(super) fn new(prices: &[Price]) -> Self {
        Self(
            prices
                .iter()
                .map(|p| ((p.provider.clone(), p.model.clone()), p.clone()))
                .collect(),
        )
    }

    /// The cost of one attempt's usage; `None` when the model has no price.
    pub(super) fn cost(&self, provider: &str, model: &str, usage: Usage) -> Option<f64> {
        let price = self.0.get(&(provider.to_owned(), model.to_owned()))?;
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        let cached_price = price.cached_input_per_mtok.unwrap_or(price.input_per_mtok);
        Some(
            (fresh as f64 * price.input_per_mtok
                + cached as f64 * cached_price
                + usage.output_tokens as f64 * price.output_per_mtok)
                / 1_000_000.0,
        )
    }
}

/// The sum over attempts; unknown as soon as one paid attempt had no price.
#[derive(Debug, Default)]
pub(super) struct CostTally {
    usd: f64,
    priced: u32,
    unpriced: u32,
}

impl CostTally {
    pub(super) fn add(&mut self, cost: Option<f64>) {
        match cost {
            Some(usd) => {
                self.usd += usd;
                self.priced += 1;
            }
            None => self.unpriced += 1,
        }
    }

    /// The total, when every paid attempt had a price.
    pub(super) fn total(&self) -> Option<f64> {
        (self.priced > 0 && self.unpriced == 0).then_some(self.usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_use_their_own_price() {
        let table = PriceTable::new(&[Price {
            provider: "openai".into(),
            model: "gpt".into(),
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: Some(0.5),
        }]);
        let usage = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 400_000,
            cache_write_tokens: 0,
            output_tokens: 500_000,
            total_tokens: 1_500_000,
        };
        let cost = table.cost("openai", "gpt", usage).unwrap();
        assert!(
            (cost - (0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)).abs() < 1e-9,
            "{cost}"
        );
        assert_eq!(table.cost("openai", "other", usage), None);
        let mut tally = CostTally::default();
        tally.add(Some(1.0));
        tally.add(Some(0.5));
        assert_eq!(tally.total(), Some(1.5));
        tally.add(None);
        assert_eq!(
            tally.total(),
            None,
            "a partial sum would understate the cost"
        );
        assert_eq!(CostTally::default().total(), None);
    }
}
