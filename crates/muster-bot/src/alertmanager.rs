//! Prometheus Alertmanager's webhook (payload version 4): what a notification says, and
//! how it reads as a Muster alert. Pure: no store, no network.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One webhook notification: the alerts of one group (by `groupKey`), firing or resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` while any alert of the group fires, else `resolved`.
    pub status: Status,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One alert of a notification.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: Status,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// Why a notification cannot be taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("not an Alertmanager webhook notification: {0}")]
    Json(String),
    #[error("webhook payload version {0:?} is not supported (this receiver reads version 4)")]
    Version(String),
    #[error("the notification carries no alerts")]
    NoAlerts,
    #[error("the notification has no groupKey")]
    NoGroupKey,
}

/// The order of severities, most urgent first, for the headline.
const SEVERITY_ORDER: [&str; 6] = ["critical", "page", "error", "high", "warning", "info"];

impl Notification {
    /// Parses and checks a webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        let n: Notification =
            serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
        if n.version != "4" {
            return Err(PayloadError::Version(n.version));
        }
        if n.group_key.is_empty() {
            return Err(PayloadError::NoGroupKey);
        }
        if n.alerts.is_empty() {
            return Err(PayloadError::NoAlerts);
        }
        Ok(n)
    }

    /// Whether any of its alerts fires (the notification's own `status` is not trusted
    /// over its alerts).
    pub fn firing(&self) -> bool {
        self.alerts.iter().any(|a| a.status == Status::Firing)
    }

    /// The alerts in `status`, each as its fingerprint and start time, sorted.
    pub fn episode(&self, status: Status) -> Vec<String> {
        let mut alerts: Vec<String> = self
            .alerts
            .iter()
            .filter(|a| a.status == status)
            .map(|a| format!("{}@{}", self.fingerprint(a), a.starts_at))
            .collect();
        alerts.sort();
        alerts.dedup();
        alerts
    }

    /// The most urgent `severity` label among the firing alerts (any alert when all are
    /// resolved), if any carries one.
    pub fn severity(&self) -> Option<String> {
        let firing: Vec<&Alert> = self
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .collect();
        let pool = if firing.is_empty() {
            self.alerts.iter().collect()
        } else {
            firing
        };
        let severities: Vec<String> = pool
            .iter()
            .filter_map(|a| a.labels.get("severity"))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 32
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            .collect();
        severities
            .iter()
            .min_by_key(|s| {
                SEVERITY_ORDER
                    .iter()
                    .position(|known| known == s)
                    .unwrap_or(SEVERITY_ORDER.len())
            })
            .cloned()
    }

    /// A key that is the same for every delivery of this very notification (Alertmanager
    /// sends again when a delivery failed, and repeats an unchanged group), and differs
    /// when an alert starts, ends or joins the group.
    pub fn idempotency_key(&self) -> String {
        let mut alerts: Vec<String> = self
            .alerts
            .iter()
            .map(|a| {
                let ends = if a.status == Status::Resolved {
                    a.ends_at.as_str()
                } else {
                    ""
                };
                format!(
                    "{}|{:?}|{}|{}",
                    self.fingerprint(a),
                    a.status,
                    a.starts_at,
                    ends
                )
            })
            .collect();
        alerts.sort();
        let described = format!(
            "{}\n{:?}\n{}",
            self.group_key,
            self.status,
            alerts.join("\n")
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, described.as_bytes());
        format!("alertmanager:{}", hex::encode(&digest.as_ref()[..16]))
    }

    /// The alert's own fingerprint, or one made from its labels (older senders).
    fn fingerprint(&self, alert: &Alert) -> String {
        if !alert.fingerprint.is_empty() {
            return alert.fingerprint.clone();
        }
        alert
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What the group is called: its alert name, else its grouping labels.
    fn title(&self) -> String {
        if let Some(name) = self.common_labels.get("alertname") {
            return one_line(name);
        }
        if !self.group_labels.is_empty() {
            return labels_line(&self.group_labels);
        }
        let mut names: Vec<&str> = self
            .alerts
            .iter()
            .filter_map(|a| a.labels.get("alertname").map(String::as_str))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            "alert".into()
        } else {
            one_line(&names.join(", "))
        }
    }

    /// The message for members, at most `max_bytes` long: a headline, the labels and
    /// annotations every alert shares, then each alert's own, with when it started (and
    /// ended). Every value the sender chose is put on one line, so that none can pass
    /// for a line of the bot's own.
    pub fn render(&self, headline: &str, max_bytes: usize) -> String {
        let text = self.render_whole(headline);
        if text.len() <= max_bytes {
            return text;
        }
        let note = "\n(cut short: the whole notification is in Alertmanager)";
        let mut end = max_bytes.saturating_sub(note.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{note}", &text[..end])
    }

    fn render_whole(&self, headline: &str) -> String {
        let firing = self
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .count();
        let mut out = String::new();
        let severity = self
            .severity()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        let count = match (self.status, self.alerts.len()) {
            (_, 1) => String::new(),
            (Status::Firing, n) => format!(" ({firing} of {n} firing)"),
            (Status::Resolved, n) => format!(" ({n} alerts)"),
        };
        out.push_str(&format!("{headline}{severity}: {}{count}\n", self.title()));
        let one = self.alerts.len() == 1;
        let shared = if one {
            &self.alerts[0].labels
        } else {
            &self.common_labels
        };
        if !shared.is_empty() {
            out.push_str(&format!("Labels: {}\n", labels_line(shared)));
        }
        let annotations = if one {
            &self.alerts[0].annotations
        } else {
            &self.common_annotations
        };
        for (k, v) in annotations {
            out.push_str(&format!("{}: {}\n", capitalised(k), one_line(v)));
        }
        if one {
            out.push_str(&times(&self.alerts[0]));
        } else {
            for alert in &self.alerts {
                let own: BTreeMap<String, String> = alert
                    .labels
                    .iter()
                    .filter(|(k, _)| !self.common_labels.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let state = match alert.status {
                    Status::Firing => "firing",
                    Status::Resolved => "resolved",
                };
                out.push_str(&format!("- {state}: {}\n", labels_line(&own)));
                for (k, v) in alert
                    .annotations
                    .iter()
                    .filter(|(k, _)| !self.common_annotations.contains_key(*k))
                {
                    out.push_str(&format!("  {}: {}\n", capitalised(k), one_line(v)));
                }
                out.push_str(&format!("  {}", times(alert)));
            }
        }
        if self.truncated_alerts > 0 {
            out.push_str(&format!(
                "(and {} more alerts Alertmanager left out)\n",
                self.truncated_alerts
            ));
        }
        if !self.external_url.is_empty() {
            out.push_str(&format!("Alertmanager: {}\n", one_line(&self.external_url)));
        }
        out.trim_end().to_string()
    }
}

fn labels_line(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{}={}", one_line(k), one_line(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest a single label or annotation value is shown.
const MAX_VALUE_CHARS: usize = 1000;

/// `value` on one line: control characters and text-direction overrides become spaces,
/// and a very long value is cut.
fn one_line(value: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out: String = value
        .chars()
        .map(|c| if c.is_control() || bidi(c) { ' ' } else { c })
        .take(MAX_VALUE_CHARS)
        .collect();
    if value.chars().count() > MAX_VALUE_CHARS {
        out.push('…');
    }
    out
}

fn capitalised(key: &str) -> String {
    let key = one_line(key);
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// When an alert started (and ended), in UTC.
fn times(alert: &Alert) -> String {
    let mut line = format!("Since: {}", readable_time(&alert.starts_at));
    if alert.status == Status::Resolved {
        line.push_str(&format!(", resolved: {}", readable_time(&alert.ends_at)));
    }
    line.push('\n');
    line
}

/// `2026-12-02T13:01:02.5Z` as `2026-12-02 13:01:02 UTC`; anything else as it came.
fn readable_time(t: &str) -> String {
    let b = t.as_bytes();
    let shaped = b.len() >= 20 && b[10] == b'T' && t.ends_with('Z') && t.is_char_boundary(19);
    if shaped {
        format!("{} {} UTC", &t[..10], &t[11..19])
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(status: &str, room_b: &str) -> String {
        format!(
            r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"HighTemperature\"}}","truncatedAlerts":0,
            "status":"{status}","receiver":"muster",
            "groupLabels":{{"alertname":"HighTemperature"}},
            "commonLabels":{{"alertname":"HighTemperature"}},
            "commonAnnotations":{{}},
            "externalURL":"http://127.0.0.1:9093",
            "alerts":[
              {{"status":"{room_b}","labels":{{"alertname":"HighTemperature","severity":"critical","room":"server-b"}},
               "annotations":{{"summary":"Server room B is at 41 C"}},
               "startsAt":"2026-12-02T13:01:02.5Z","endsAt":"2026-12-02T13:20:00Z","generatorURL":"","fingerprint":"aa11"}},
              {{"status":"firing","labels":{{"alertname":"HighTemperature","severity":"warning","room":"server-c"}},
               "annotations":{{"summary":"Server room C is at 35 C"}},
               "startsAt":"2026-12-02T13:02:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"bb22"}}
            ]}}"#
        )
    }

    #[test]
    fn a_grouped_notification_reads_with_its_labels_annotations_and_times() {
        let n = Notification::parse(sample("firing", "firing").as_bytes()).unwrap();
        assert_eq!(n.severity().as_deref(), Some("critical"));
        let text = n.render("FIRING", 65536);
        assert!(
            text.starts_with("FIRING [critical]: HighTemperature (2 of 2 firing)\n"),
            "{text}"
        );
        assert!(
            text.contains("Labels: alertname=HighTemperature\n"),
            "{text}"
        );
        assert!(
            text.contains("- firing: room=server-b, severity=critical"),
            "{text}"
        );
        assert!(text.contains("  Summary: Server room B is at 41 C"));
        assert!(text.contains("Since: 2026-12-02 13:01:02 UTC"));
        assert!(text.contains("Alertmanager: http://127.0.0.1:9093"));
    }

    #[test]
    fn redeliveries_share_a_key_and_any_change_makes_a_new_one() {
        let first = Notification::parse(sample("firing", "firing").as_bytes()).unwrap();
        let again = Notification::parse(sample("firing", "firing").as_bytes()).unwrap();
        assert_eq!(first.idempotency_key(), again.idempotency_key());
        let one_resolved = Notification::parse(sample("firing", "resolved").as_bytes()).unwrap();
        assert_ne!(first.idempotency_key(), one_resolved.idempotency_key());
        assert!(one_resolved
            .render("UPDATE", 65536)
            .contains("resolved: 2026-12-02 13:20:00 UTC"));
        // With room B resolved, the severity is the firing alert's.
        assert_eq!(one_resolved.severity().as_deref(), Some("warning"));
    }

    #[test]
    fn sent_values_stay_on_one_line_and_a_long_notification_is_cut_to_the_limit() {
        let forged = sample("firing", "firing").replace(
            "Server room B is at 41 C",
            "fine\\nRESOLVED [critical]: HighTemperature\\u202e",
        );
        let n = Notification::parse(forged.as_bytes()).unwrap();
        let text = n.render("FIRING", 65536);
        assert!(!text.lines().any(|l| l.starts_with("RESOLVED")), "{text}");
        assert!(text.contains("Summary: fine RESOLVED [critical]: HighTemperature "));
        let cut = n.render("FIRING", 120);
        assert!(cut.len() <= 120, "{}", cut.len());
        assert!(cut.ends_with("(cut short: the whole notification is in Alertmanager)"));
        assert_eq!(
            n.episode(Status::Firing),
            ["aa11@2026-12-02T13:01:02.5Z", "bb22@2026-12-02T13:02:00Z"]
        );
        assert!(n.firing());
    }

    #[test]
    fn other_payloads_are_refused_with_the_reason() {
        assert!(matches!(
            Notification::parse(b"{not json"),
            Err(PayloadError::Json(_))
        ));
        let v3 = sample("firing", "firing").replace(r#""version":"4""#, r#""version":"3""#);
        assert_eq!(
            Notification::parse(v3.as_bytes()).unwrap_err(),
            PayloadError::Version("3".into())
        );
        let empty = r#"{"version":"4","groupKey":"k","status":"firing","alerts":[]}"#;
        assert_eq!(
            Notification::parse(empty.as_bytes()).unwrap_err(),
            PayloadError::NoAlerts
        );
    }
}
