//! Latency histograms (microseconds) with the percentiles the reports quote.

use hdrhistogram::Histogram;

pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // 1 µs to 100 s at 3 significant figures.
        Latency(Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram bounds"))
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    pub fn max_us(&self) -> u64 {
        self.0.max()
    }

    /// `{"p50_us":…, "p99_us":…, "p999_us":…, "max_us":…}`
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.quantile_us(0.5),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.max_us(),
        })
    }
}
