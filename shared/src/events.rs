//! Live events. Written with `pg_notify` inside the transaction that made the
//! change, so a client never sees an event for a change that rolled back, and
//! every api replica (each LISTENing) receives it.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const CHANNEL: &str = "norn_events";

/// Postgres caps a NOTIFY payload at 8000 bytes; long step output is cut here
/// (the full text stays in the deployment row).
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

/// Cuts `text` to at most `max` bytes on a char boundary, keeping the end
/// (where errors usually are).
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

pub async fn publish(conn: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let mut event = event.clone();
    if let Some(obj) = event.payload.as_object_mut() {
        for key in ["output", "error"] {
            if let Some(serde_json::Value::String(s)) = obj.get_mut(key) {
                *s = tail(s, MAX_TEXT).to_owned();
            }
        }
    }
    let text = serde_json::to_string(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(text)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(super::tail("hello", 10), "hello");
        assert_eq!(super::tail("hello", 3), "llo");
        assert_eq!(super::tail("aé", 1), "");
    }
}
