//! Live events. Written with `pg_notify` inside the transaction that made the
//! change, so a client never sees an event for a change that rolled back, and
//! every api replica (each LISTENing) receives it.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const CHANNEL: &str = "norn_events";

/// Postgres refuses a NOTIFY payload of 8000 bytes or more. The limit is
/// checked on the serialised text, since JSON escaping can grow a string
/// sixfold (`\u0001`); events carry ids and short fields, and clients fetch
/// the rest (step logs, full errors) from the API.
pub const MAX_PAYLOAD: usize = 7900;
/// What a long text field is first cut to.
const MAX_TEXT: usize = 2000;

mod payloads;

pub use payloads::*;

/// One live event: whose app, what happened (`type` and `payload`, one
/// payload type per kind), and whether long text in it was cut to fit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    pub app: String,
    #[serde(flatten)]
    pub body: EventBody,
    /// Text fields were cut to their end, or nested parts dropped, to fit a
    /// NOTIFY; the API has the whole record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Event {
    pub fn new(app: &str, body: EventBody) -> Self {
        Self {
            app: app.to_owned(),
            body,
            truncated: false,
        }
    }
}

pub use crate::text::tail;

/// The event as NOTIFY text, at most [`MAX_PAYLOAD`] bytes: long text fields
/// of the payload are cut to their end, then nested parts dropped
/// (`truncated: true`) if still too long.
pub fn encode(event: &Event) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string(event)?;
    if text.len() <= MAX_PAYLOAD {
        return Ok(text);
    }
    let mut whole = serde_json::to_value(event)?;
    whole["truncated"] = serde_json::Value::Bool(true);
    for max in [MAX_TEXT, 200, 0] {
        if let Some(obj) = whole["payload"].as_object_mut() {
            for value in obj.values_mut() {
                if let serde_json::Value::String(s) = value {
                    *s = tail(s, max).to_owned();
                } else if !(value.is_number() || value.is_boolean() || value.is_null()) {
                    *value = serde_json::Value::Null;
                }
            }
        }
        let text = serde_json::to_string(&whole)?;
        if text.len() <= MAX_PAYLOAD {
            return Ok(text);
        }
    }
    // Unreachable with bounded kinds and app ids (≤ 63 bytes): every
    // payload field is by now a short scalar or null.
    whole["payload"] = serde_json::Value::Null;
    serde_json::to_string(&whole)
}

pub async fn publish(conn: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let text = encode(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(crate::text::storable(&text).as_ref())
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Step, StepEntry, StepStatus};

    fn step_event(output: &str) -> Event {
        Event::new(
            "app",
            EventBody::DeployStep(DeployStep {
                deployment_id: "d1".into(),
                entry: StepEntry::ended(Step::Build, StepStatus::Complete, output, 3),
            }),
        )
    }

    #[test]
    fn a_payload_of_control_characters_stays_under_the_notify_limit_and_still_parses() {
        // 2000 bytes of \x01 serialise to 12000 bytes of \u0001.
        let noisy = "\x01".repeat(50_000);
        let text = encode(&step_event(&noisy)).unwrap();
        assert!(text.len() <= MAX_PAYLOAD, "{}", text.len());
        let back: Event = serde_json::from_str(&text).unwrap();
        assert!(back.truncated);
        let EventBody::DeployStep(step) = back.body else {
            panic!("{text}")
        };
        assert_eq!(step.deployment_id, "d1");
        assert_eq!(step.entry.duration_ms, Some(3));
        assert!(step.entry.output.unwrap().len() < 2000);
    }

    #[test]
    fn a_small_event_is_unchanged_and_keeps_its_wire_shape() {
        let event = step_event("ok");
        let text = encode(&event).unwrap();
        assert_eq!(text, serde_json::to_string(&event).unwrap());
        let wire: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"app": "app", "type": "deploy.step", "payload": {
                "deploymentId": "d1", "step": "build", "status": "complete",
                "durationMs": 3, "output": "ok"}})
        );
        assert_eq!(serde_json::from_value::<Event>(wire).unwrap(), event);
    }
}
