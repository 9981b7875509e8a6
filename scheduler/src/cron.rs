//! Turns cron states into enqueued ticks. Each tick's key is inserted in the
//! transaction that enqueues its job, so a tick is enqueued once however many
//! schedulers (or leader changes) see it.

use chrono::{DateTime, Utc};
use norn_shared::db::cron::{self, CronState, Trigger};
use norn_shared::domain::CronExpr;
use norn_shared::events::{self, CronMissed, Event, EventBody};
use norn_shared::infraspec::{CronPolicy, Missed};
use norn_shared::jobs::CronJob;
use norn_shared::queue::{self, Queue};
use sqlx::PgPool;

use crate::SchedulerError;

/// What is due for one app between its last handled tick and now.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// (scheduled_at, trigger)
    pub run: Vec<(DateTime<Utc>, Trigger)>,
    /// Ticks that will not run (the missed policy), and the span they cover.
    pub missed: usize,
    pub missed_span: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Ticks later than the grace period were missed (no scheduler ran); the
/// policy decides how many of those still run. Ticks within grace run, each.
pub fn plan(expr: &CronExpr, policy: &CronPolicy, last: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    // Checked: a grace beyond what a date can hold means "every tick is on time".
    let edge = chrono::Duration::from_std(policy.grace)
        .ok()
        .and_then(|grace| now.checked_sub_signed(grace))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let keep = match policy.missed {
        Missed::Coalesce => 1,
        Missed::CatchUp => policy.catch_up_limit as usize,
    };
    let (late, dropped) = expr.ticks_between(last, edge.min(now), keep);
    let (on_time, _) = expr.ticks_between(last.max(edge), now, usize::MAX);
    let span = |first: Option<&DateTime<Utc>>, last: Option<&DateTime<Utc>>| {
        first.zip(last).map(|(a, b)| (*a, *b))
    };
    let mut run: Vec<(DateTime<Utc>, Trigger)> = Vec::new();
    let (missed, missed_span) = match policy.missed {
        // One run for everything missed, unless an on-time tick runs anyway.
        Missed::Coalesce if on_time.is_empty() && !late.is_empty() => {
            run.extend(late.last().map(|t| (*t, Trigger::CatchUp)));
            (dropped, (dropped > 0).then(|| (last, late[0])))
        }
        Missed::Coalesce => (dropped + late.len(), span(late.first(), late.last())),
        Missed::CatchUp => {
            run.extend(late.iter().map(|t| (*t, Trigger::CatchUp)));
            (
                dropped,
                (dropped > 0).then(|| (last, late.first().copied().unwrap_or(edge))),
            )
        }
    };
    run.extend(on_time.into_iter().map(|t| (t, Trigger::Schedule)));
    Plan {
        run,
        missed,
        missed_span,
    }
}

/// Plans every active cron app once. Returns the earliest next tick, so the
/// leader sleeps exactly until then.
pub async fn plan_all(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, SchedulerError> {
    let states = {
        let mut conn = pool.acquire().await?;
        cron::active(&mut conn).await?
    };
    let mut earliest: Option<DateTime<Utc>> = None;
    for state in states {
        match plan_app(pool, &state, now).await {
            Ok(next) => {
                earliest = match (earliest, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Err(e) => tracing::warn!(app = %state.app, error = %e, "planning cron ticks failed"),
        }
    }
    Ok(earliest)
}

async fn plan_app(
    pool: &PgPool,
    seen: &CronState,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, SchedulerError> {
    let expr = match seen.cron() {
        Ok(expr) => expr,
        Err(e) => {
            tracing::warn!(app = %seen.app, error = %e, "cron schedule unusable; not scheduling");
            return Ok(None);
        }
    };
    let last = seen.last_scheduled_at.unwrap_or(now);
    let next = expr.next_after(last);
    if next.is_none_or(|n| n > now) {
        return Ok(next);
    }
    let mut tx = pool.begin().await?;
    // Re-read under the row lock: a pause, override or another scheduler may
    // have moved on since we looked.
    let Some(state) = cron::lock(&mut tx, &seen.app).await? else {
        return Ok(None);
    };
    if state.paused
        || state.last_scheduled_at != seen.last_scheduled_at
        || state.expression() != seen.expression()
    {
        return Ok(Some(now));
    }
    let (Some(process), Some(policy)) =
        (state.process.clone(), policy_of(&mut tx, &state.app).await?)
    else {
        return Ok(None);
    };
    let plan = plan(&expr, &policy, last, now);
    for (at, trigger) in &plan.run {
        if cron::record_tick(&mut tx, &state.app, &process, *at, *trigger).await? {
            let job = CronJob {
                app: state.app.clone(),
                process: process.clone(),
                scheduled_at: *at,
            };
            let key = format!("cron:{}:{}:{}", state.app, process, at.timestamp_micros());
            queue::enqueue(&mut tx, Queue::Cron, &job, Some(&key)).await?;
        }
    }
    if let Some((from, to)) = plan.missed_span {
        record_missed(
            &mut tx,
            &state.app,
            &process,
            plan.missed,
            from,
            to,
            &policy,
        )
        .await?;
    }
    let next = expr.next_after(now);
    cron::set_planned(&mut tx, &state.app, now, next).await?;
    tx.commit().await?;
    Ok(next)
}

async fn policy_of(
    conn: &mut sqlx::PgConnection,
    app: &str,
) -> Result<Option<CronPolicy>, SchedulerError> {
    let Some(app) = crate::incidents::valid_app(conn, app).await? else {
        return Ok(None);
    };
    Ok(app
        .spec
        .processes
        .values()
        .find_map(|p| p.schedule.as_ref().map(|s| s.policy.clone())))
}

async fn record_missed(
    conn: &mut sqlx::PgConnection,
    app: &str,
    process: &str,
    count: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    policy: &CronPolicy,
) -> Result<(), SchedulerError> {
    let message = format!(
        "{count} tick(s) between {from} and {to} were missed (no scheduler was running); policy {:?}",
        policy.missed
    );
    let payload = CronMissed {
        process: process.to_owned(),
        count: count as u64,
        from,
        to,
        reason: message.clone(),
    };
    crate::sweep::trail(conn, app, process, "cron.missed", &message, &payload).await?;
    events::publish(conn, &Event::new(app, EventBody::CronMissed(payload))).await?;
    tracing::warn!(app, count, "cron ticks missed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn every_second() -> CronExpr {
        CronExpr::parse("* * * * * *", None).unwrap()
    }

    #[test]
    fn on_time_ticks_all_run() {
        let p = plan(&every_second(), &CronPolicy::default(), at(0), at(3));
        assert_eq!(
            p.run,
            vec![
                (at(1), Trigger::Schedule),
                (at(2), Trigger::Schedule),
                (at(3), Trigger::Schedule)
            ]
        );
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn coalesce_runs_one_for_an_outage() {
        let policy = CronPolicy::default(); // grace 30 s
        let minutely = CronExpr::parse("* * * * *", None).unwrap();
        let p = plan(&minutely, &policy, at(0), at(3600 + 10));
        // 60 minutes passed; 3600 is within grace (10 s ago) so it runs on time;
        // the 59 older ones are missed and not run.
        assert_eq!(p.run, vec![(at(3600), Trigger::Schedule)]);
        assert_eq!(p.missed, 59);
        let p = plan(&minutely, &policy, at(0), at(3600 - 20 + 60));
        assert_eq!(p.run, vec![(at(3600), Trigger::CatchUp)]);
        assert_eq!(p.missed, 59);
    }

    #[test]
    fn catch_up_runs_a_bounded_number() {
        let policy = CronPolicy {
            missed: Missed::CatchUp,
            catch_up_limit: 5,
            ..Default::default()
        };
        let minutely = CronExpr::parse("* * * * *", None).unwrap();
        let p = plan(&minutely, &policy, at(0), at(3600 + 50));
        let late: Vec<_> = p
            .run
            .iter()
            .filter(|(_, t)| *t == Trigger::CatchUp)
            .collect();
        assert_eq!(late.len(), 5);
        assert_eq!(late[4].0, at(3600));
        assert_eq!(p.missed, 55);
    }
}
