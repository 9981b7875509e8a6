//! A cron expression with its timezone, parsed once: 5 fields (minute
//! precision) or 6 (seconds first), evaluated in an IANA timezone (UTC when
//! none is given).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    schedule: cron::Schedule,
    tz: Tz,
}

impl CronExpr {
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<CronExpr, String> {
        let text = expr.trim().to_owned();
        let normalized = match text.split_whitespace().count() {
            5 => format!("0 {text}"),
            6 => text.clone(),
            n => {
                return Err(format!(
                    "{expr:?} has {n} fields; use 5 (min hour day month weekday) or 6 (with seconds first)"
                ));
            }
        };
        let schedule = cron::Schedule::from_str(&normalized)
            .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| format!("{name:?} is not an IANA timezone (e.g. Europe/Berlin)"))?,
        };
        // An expression that never fires (Feb 30) is a mistake, not a schedule.
        if schedule
            .after(&Utc::now().with_timezone(&tz))
            .next()
            .is_none()
        {
            return Err(format!("{expr:?} never fires"));
        }
        Ok(CronExpr { text, schedule, tz })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Ticks in `(from, to]`, oldest first, at most `limit` of the newest,
    /// and how many older ones were left out (counted up to 100,000).
    pub fn ticks_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, usize) {
        if limit == 0 || to <= from {
            return (Vec::new(), 0);
        }
        // Walk back from just after `to`, so a long outage costs `limit` steps.
        let probe = (to + chrono::Duration::milliseconds(1)).with_timezone(&self.tz);
        let mut kept: Vec<DateTime<Utc>> = self
            .schedule
            .after(&probe)
            .rev()
            .map(|d| d.with_timezone(&Utc))
            .skip_while(|d| *d > to)
            .take_while(|d| *d > from)
            .take(limit)
            .collect();
        kept.reverse();
        let dropped = match kept.first() {
            Some(oldest) if kept.len() == limit => self
                .schedule
                .after(&from.with_timezone(&self.tz))
                .map(|d| d.with_timezone(&Utc))
                .take_while(|d| d < oldest)
                .take(100_000)
                .count(),
            _ => 0,
        };
        (kept, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_fields_fire_on_the_minute() {
        let c = CronExpr::parse("*/15 * * * *", None).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        assert_eq!(
            c.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap())
        );
    }

    #[test]
    fn timezone_shifts_ticks() {
        let c = CronExpr::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            c.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 8, 0, 0).unwrap())
        );
    }

    #[test]
    fn ticks_between_keeps_the_newest() {
        let c = CronExpr::parse("* * * * * *", None).unwrap();
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = from + chrono::Duration::seconds(10);
        let (ticks, dropped) = c.ticks_between(from, to, 3);
        assert_eq!(dropped, 7);
        assert_eq!(ticks.len(), 3);
        assert_eq!(ticks[2], to);
        let (all, none) = c.ticks_between(from, to, usize::MAX);
        assert_eq!((all.len(), none), (10, 0));
        assert_eq!(all[0], from + chrono::Duration::seconds(1));
        let (between, _) = c.ticks_between(from + chrono::Duration::milliseconds(500), to, 100);
        assert_eq!(between.len(), 10);
    }

    #[test]
    fn rejects_bad_expressions() {
        assert!(
            CronExpr::parse("* * *", None)
                .unwrap_err()
                .contains("3 fields")
        );
        assert!(CronExpr::parse("61 * * * *", None).is_err());
        assert!(CronExpr::parse("* * * * *", Some("Mars/Olympus")).is_err());
    }
}
