//! The CronJob controller and the schedules it reads.
//!
//! A schedule is standard cron (minute, hour, day of month, month, day of
//! week; `*`, lists, ranges, steps, month and day names, and the `@hourly`
//! … `@yearly` macros), in the CronJob's `timeZone` (else UTC). At each
//! scheduled time the controller creates the Job
//! `<cronjob>-<minutes since the epoch>` from `jobTemplate`, honouring
//! `concurrencyPolicy` (Allow, Forbid, Replace), `suspend` and
//! `startingDeadlineSeconds` (a start missed by more is skipped), keeps
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, and
//! deletes finished Jobs beyond the history limits.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::cache::ObjectKey;
use crate::client::Propagation;
use crate::pods;
use crate::{Ctx, Outcome};

/// A parsed schedule: for each field, which values match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month and day of week both restricted: either matches (cron's rule).
    either_day: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's matching values as a bit set, or why it is malformed.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("failed to parse int from {s}"))
    };
    let mut bits = 0u64;
    let mut restricted = true;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("failed to parse int from {s}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            if part == range {
                restricted = false;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    /// Parses a schedule as kube's CronJob validation accepts it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text}",
                fields.len()
            ));
        };
        let (minutes, _) = field(minute, 0, 59, &[])?;
        let (hours, _) = field(hour, 0, 23, &[])?;
        let (days, dom_restricted) = field(dom, 1, 31, &[])?;
        let (months, _) = field(month, 1, 12, MONTHS)?;
        let (mut weekdays, dow_restricted) = field(dow, 0, 7, WEEKDAYS)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            either_day: dom_restricted && dow_restricted,
        })
    }

    fn day_matches(&self, t: &Zoned) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first scheduled time after `after` (within five years).
    pub fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        let start = after
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = after.checked_add(5.years()).ok()?;
        let mut t = start;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .ok()?
                    .start_of_day()
                    .ok()?
                    .checked_add(1.month())
                    .ok()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t.start_of_day().ok()?.checked_add(1.day()).ok()?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// The most recent scheduled time in (`earliest`, `now`], and how many
/// were missed before it.
fn most_recent(schedule: &Schedule, earliest: &Zoned, now: &Zoned) -> (Option<Zoned>, usize) {
    let mut found = None;
    let mut count = 0;
    let mut t = earliest.clone();
    while let Some(next) = schedule.next_after(&t) {
        if &next > now {
            break;
        }
        count += 1;
        t = next.clone();
        found = Some(next);
        if count > 100 {
            // Too far behind to walk: jump to the last hour before now.
            let hour_ago = now.checked_sub(1.hour()).unwrap_or_else(|_| now.clone());
            if hour_ago > t {
                t = hour_ago;
            }
        }
    }
    (found, count)
}

fn zone_of(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        None | Some("") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone {name}: {e}")),
    }
}

fn job_finished(job: &Job) -> Option<bool> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::api_version(&()).into_owned()),
        kind: Some(Job::kind(&()).into_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// A time as Go's RFC 3339 writes it in its zone: `Z` for UTC, else the offset.
fn rfc3339_in_zone(t: &Zoned) -> String {
    let local = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if t.offset().seconds() == 0 {
        format!("{local}Z")
    } else {
        format!("{local}{}", t.strftime("%:z"))
    }
}

/// Reconciles one CronJob.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(cj) = ctx.cronjobs.get(key) else {
        return Ok(None);
    };
    let spec = cj.spec.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api = ctx.clients.vc::<Job>(&key.vc, key.namespace.as_deref());
    let mut jobs = ctx.jobs.controlled_by(&key.vc, &uid);
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    let mut status = cj.status.clone().unwrap_or_default();
    // History: finished Jobs beyond the limits go, oldest first.
    for (succeeded, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let finished: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(succeeded))
            .collect();
        let extra = finished.len().saturating_sub(limit.max(0) as usize);
        for job in &finished[..extra] {
            jobs_api
                .delete(
                    &job.name_any(),
                    Propagation::Background,
                    job.metadata.uid.as_deref(),
                )
                .await?;
            ctx.events.normal(
                key,
                "CronJob",
                &uid,
                "SuccessfulDelete",
                &format!("Deleted job {}", job.name_any()),
            );
        }
    }
    let active: Vec<&Arc<Job>> = jobs
        .iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    status.active = (!active.is_empty()).then(|| active.iter().map(|j| reference(j)).collect());
    if let Some(last) = jobs
        .iter()
        .filter(|j| job_finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max()
    {
        status.last_successful_time = Some(last);
    }
    let mut next = None;
    if cj.metadata.deletion_timestamp.is_none() && spec.suspend != Some(true) {
        match (Schedule::parse(&spec.schedule), zone_of(&cj)) {
            (Ok(schedule), Ok(zone)) => {
                next = run_schedule(ctx, key, &cj, &schedule, &zone, &active, &mut status).await?;
            }
            (Err(e), _) | (_, Err(e)) => {
                ctx.events.warning(
                    key,
                    "CronJob",
                    &uid,
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
            }
        }
    }
    if cj.status.as_ref() != Some(&status) {
        let mut updated = (*cj).clone();
        updated.status = Some(status);
        let api = ctx.clients.vc::<CronJob>(&key.vc, key.namespace.as_deref());
        if !ctx
            .cronjobs
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    Ok(next)
}

/// Starts the Job of the most recent scheduled time, if it is due; the
/// wait until the next one.
async fn run_schedule(
    ctx: &Ctx,
    key: &ObjectKey,
    cj: &CronJob,
    schedule: &Schedule,
    zone: &TimeZone,
    active: &[&Arc<Job>],
    status: &mut CronJobStatus,
) -> Result<Option<Duration>, crate::Error> {
    let spec = cj.spec.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let now = Timestamp::now().to_zoned(zone.clone());
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now.timestamp(), |t| t.0);
    let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let window =
            Timestamp::from_second(now.timestamp().as_second() - deadline).unwrap_or(earliest);
        earliest = earliest.max(window);
    }
    let wait_for_next = |now: &Zoned| {
        schedule.next_after(now).map(|n| {
            let secs = n.timestamp().as_second() - now.timestamp().as_second();
            Duration::from_secs(secs.max(1) as u64)
        })
    };
    let (due, missed) = most_recent(schedule, &earliest.to_zoned(zone.clone()), &now);
    let Some(due) = due else {
        return Ok(wait_for_next(&now));
    };
    if missed > 100 {
        ctx.events.warning(key, "CronJob", &uid, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
    }
    let minutes = due.timestamp().as_second() / 60;
    let name = format!("{}-{minutes}", key.name);
    if active.iter().any(|j| j.name_any() == name)
        || ctx
            .jobs
            .get(&ObjectKey::new(&key.vc, key.namespace.as_deref(), &name))
            .is_some()
    {
        status.last_schedule_time = Some(pods::time(due.timestamp()));
        return Ok(wait_for_next(&now));
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            ctx.events.normal(key, "CronJob", &uid, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid");
            return Ok(wait_for_next(&now));
        }
        Some("Replace") => {
            let api = ctx.clients.vc::<Job>(&key.vc, key.namespace.as_deref());
            for job in active {
                api.delete(
                    &job.name_any(),
                    Propagation::Background,
                    job.metadata.uid.as_deref(),
                )
                .await?;
                ctx.events.normal(
                    key,
                    "CronJob",
                    &uid,
                    "SuccessfulDelete",
                    &format!("Deleted job {}", job.name_any()),
                );
            }
            status.active = None;
        }
        _ => {}
    }
    let template = spec.job_template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
        rfc3339_in_zone(&due),
    );
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: key.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let api = ctx.clients.vc::<Job>(&key.vc, key.namespace.as_deref());
    match api.create(&job).await {
        Ok(created) => {
            ctx.events.normal(
                key,
                "CronJob",
                &uid,
                "SuccessfulCreate",
                &format!("Created job {name}"),
            );
            status
                .active
                .get_or_insert_with(Vec::new)
                .push(reference(&created));
            ctx.jobs.upsert(&key.vc, created);
        }
        Err(e) if e.is_status(409) => {}
        Err(e) => {
            ctx.events.warning(
                key,
                "CronJob",
                &uid,
                "FailedCreate",
                &format!("Error creating job: {}", crate::replicaset::api_message(&e)),
            );
            return Err(e);
        }
    }
    status.last_schedule_time = Some(pods::time(due.timestamp()));
    Ok(wait_for_next(&now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Zoned {
        text.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(TimeZone::UTC)
            .unwrap()
    }

    #[test]
    fn schedules_step_to_their_next_time() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(&at("2026-01-01T10:02:30")),
            Some(at("2026-01-01T10:05:00"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(&at("2026-01-01T10:00:00")),
            Some(at("2026-01-01T11:00:00"))
        );
        let weekdays = Schedule::parse("30 9 * * MON-FRI").unwrap();
        // 2026-01-03 is a Saturday.
        assert_eq!(
            weekdays.next_after(&at("2026-01-03T12:00:00")),
            Some(at("2026-01-05T09:30:00"))
        );
        let yearly = Schedule::parse("0 0 1 JAN *").unwrap();
        assert_eq!(
            yearly.next_after(&at("2026-03-01T00:00:00")),
            Some(at("2027-01-01T00:00:00"))
        );
        // Day of month and day of week both set: either will do.
        let either = Schedule::parse("0 0 13 * 5").unwrap();
        assert_eq!(
            either.next_after(&at("2026-02-01T00:00:00")),
            Some(at("2026-02-06T00:00:00"))
        );
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(&at("2026-01-03T00:00:00")),
            Some(at("2026-01-04T00:00:00"))
        );
    }

    #[test]
    fn scheduled_times_are_written_in_their_zone() {
        assert_eq!(
            rfc3339_in_zone(&at("2026-01-01T10:00:00")),
            "2026-01-01T10:00:00Z"
        );
        let paris =
            at("2026-01-01T10:00:00").with_time_zone(TimeZone::get("Europe/Paris").unwrap());
        assert_eq!(rfc3339_in_zone(&paris), "2026-01-01T11:00:00+01:00");
    }

    #[test]
    fn malformed_schedules_are_refused() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "a * * * *",
            "* * * 13 *",
            "5-2 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_recent_time_counts_what_was_missed() {
        let every_minute = Schedule::parse("* * * * *").unwrap();
        let (due, missed) = most_recent(
            &every_minute,
            &at("2026-01-01T10:00:00"),
            &at("2026-01-01T10:03:30"),
        );
        assert_eq!(due, Some(at("2026-01-01T10:03:00")));
        assert_eq!(missed, 3);
        let (none, _) = most_recent(
            &every_minute,
            &at("2026-01-01T10:00:00"),
            &at("2026-01-01T10:00:30"),
        );
        assert_eq!(none, None);
    }
}
