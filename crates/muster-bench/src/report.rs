//! Figures a scenario measured, printed as a table for people or one JSON object.

use serde_json::{Map, Value};

/// Named values in the order they were measured.
pub type Row = Vec<(String, Value)>;

/// One scenario's figures: named values, and optionally rows of a table.
#[derive(Default, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub figures: Row,
    pub rows: Vec<Row>,
    pub rows_name: &'static str,
}

/// Adds a named value to a row.
pub fn put(row: &mut Row, name: &str, value: impl Into<Value>) {
    row.push((name.to_string(), value.into()));
}

fn object(row: &Row) -> Map<String, Value> {
    row.iter().cloned().collect()
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            ..Self::default()
        }
    }

    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        put(&mut self.figures, name, value);
    }

    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("scenario".into(), self.scenario.into());
        out.extend(self.figures.iter().cloned());
        if !self.rows.is_empty() {
            out.insert(
                self.rows_name.into(),
                Value::Array(self.rows.iter().map(|r| Value::Object(object(r))).collect()),
            );
        }
        Value::Object(out)
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("{}", self.scenario);
        for (name, value) in &self.figures {
            println!("  {name:<32} {}", show(value));
        }
        // One line per figure, one column per row: tables stay narrow.
        if let Some(first) = self.rows.first() {
            for (i, (name, _)) in first.iter().enumerate() {
                let cells: Vec<String> = self
                    .rows
                    .iter()
                    .map(|row| {
                        format!("{:>12}", row.get(i).map(|c| show(&c.1)).unwrap_or_default())
                    })
                    .collect();
                println!("  {name:<32} {}", cells.join(" "));
            }
        }
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds, rounded to microseconds, from a duration.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The `q`-quantile (0..=1) of `samples`, which it sorts.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index]
}

impl Report {
    /// A numeric figure by name.
    pub fn number(&self, name: &str) -> Option<f64> {
        lookup(&self.figures, name)
    }
}

/// A numeric value of a row by name.
pub fn lookup(row: &Row, name: &str) -> Option<f64> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_f64())
}
