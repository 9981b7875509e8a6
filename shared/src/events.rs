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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub app: String,
    pub payload: serde_json::Value,
}

impl Event {
    pub fn new(kind: &str, app: &str, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            app: app.to_owned(),
            payload,
        }
    }
}

pub use crate::text::tail;

/// The event as NOTIFY text, at most [`MAX_PAYLOAD`] bytes: long text fields
/// are cut to their end, then dropped (`truncated: true`) if still too long.
pub fn encode(event: &Event) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string(event)?;
    if text.len() <= MAX_PAYLOAD {
        return Ok(text);
    }
    let mut event = event.clone();
    for max in [MAX_TEXT, 200, 0] {
        if let Some(obj) = event.payload.as_object_mut() {
            for value in obj.values_mut() {
                if let serde_json::Value::String(s) = value {
                    *s = tail(s, max).to_owned();
                } else if !(value.is_number() || value.is_boolean() || value.is_null()) {
                    *value = serde_json::Value::Null;
                }
            }
            obj.insert("truncated".into(), serde_json::Value::Bool(true));
        } else {
            event.payload = serde_json::json!({"truncated": true});
        }
        let text = serde_json::to_string(&event)?;
        if text.len() <= MAX_PAYLOAD {
            return Ok(text);
        }
    }
    // Only the kind and app are left, both bounded (app ids are ≤ 63 bytes).
    event.payload = serde_json::json!({"truncated": true});
    event.kind = tail(&event.kind, 100).to_owned();
    serde_json::to_string(&event)
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

    #[test]
    fn a_payload_of_control_characters_stays_under_the_notify_limit() {
        // 2000 bytes of \x01 serialise to 12000 bytes of \u0001.
        let noisy = "\x01".repeat(50_000);
        let event = Event::new(
            "snapshot.restore",
            "app",
            serde_json::json!({"deploymentId": "d1", "output": noisy, "error": noisy, "n": 3}),
        );
        let text = encode(&event).unwrap();
        assert!(text.len() <= MAX_PAYLOAD, "{}", text.len());
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back.payload["deploymentId"], "d1");
        assert_eq!(back.payload["n"], 3);
        assert_eq!(back.payload["truncated"], true);
    }

    #[test]
    fn a_small_event_is_unchanged() {
        let event = Event::new("deploy.step", "app", serde_json::json!({"step": "build"}));
        assert_eq!(
            encode(&event).unwrap(),
            serde_json::to_string(&event).unwrap()
        );
    }
}
