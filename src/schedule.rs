//! A project's workers and cron entries as the databases keep them, and
//! cron schedules read in a time zone (checked when they are set by the
//! project service, followed by the deploy service).

use chrono::{DateTime, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

use crate::proto::project::v1 as pb;

/// A worker (no schedule) or a cron entry, as JSON in a database.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessType {
    pub name: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schedule: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time_zone: String,
}

impl From<&pb::ProcessType> for ProcessType {
    fn from(process: &pb::ProcessType) -> Self {
        Self {
            name: process.name.clone(),
            command: process.command.clone(),
            schedule: process.schedule.clone(),
            time_zone: process.time_zone.clone(),
        }
    }
}

impl From<ProcessType> for pb::ProcessType {
    fn from(process: ProcessType) -> Self {
        Self {
            name: process.name,
            command: process.command,
            schedule: process.schedule,
            time_zone: process.time_zone,
        }
    }
}

/// A parsed schedule and the zone its times are local to.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    /// `pattern` in cron syntax (five fields, or six with seconds first)
    /// read in `zone` (an IANA name; empty: UTC). The error says what to
    /// fix.
    pub fn parse(pattern: &str, zone: &str) -> Result<Self, String> {
        let fields = pattern.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "must be five cron fields (minute hour day-of-month month weekday) or six with seconds first, \
                 such as \"0 3 * * *\"; {fields} given"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|err| format!("is not a cron schedule ({err}), such as \"0 3 * * *\""))?;
        let zone = match zone {
            "" => chrono_tz::UTC,
            name => name
                .parse()
                .map_err(|_| format!("time zone {name:?} is not an IANA time zone such as Europe/Paris"))?,
        };
        // A pattern no date matches ("0 0 31 2 *") would never run.
        let schedule = Self { cron, zone };
        match schedule.next_after(Utc::now()) {
            Some(_) => Ok(schedule),
            None => Err("never comes (no date matches it)".to_owned()),
        }
    }

    /// The last time the schedule names at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.zone), true)
            .ok()
            .map(|last| last.with_timezone(&Utc))
    }

    /// The first time the schedule names strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn five_or_six_fields_in_a_zone() {
        let at = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let paris = Schedule::parse("0 3 * * *", "Europe/Paris").unwrap();
        // 03:00 in Paris in summer is 01:00 UTC.
        assert_eq!(
            paris.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 1, 0, 0).unwrap())
        );
        let seconds = Schedule::parse("*/5 * * * * *", "").unwrap();
        assert_eq!(
            seconds.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 5).unwrap())
        );
    }

    #[test]
    fn mistakes_say_what_to_fix() {
        assert!(Schedule::parse("* * *", "").unwrap_err().contains("five cron fields"));
        assert!(
            Schedule::parse("61 * * * *", "")
                .unwrap_err()
                .contains("is not a cron schedule")
        );
        assert!(
            Schedule::parse("0 3 * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("IANA")
        );
        assert!(Schedule::parse("0 0 31 2 *", "").unwrap_err().contains("never"));
    }
}
