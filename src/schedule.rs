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

impl ProcessType {
    pub fn from_proto(name: &str, process: &pb::ProcessType) -> Self {
        Self {
            name: name.to_owned(),
            command: process.command.clone(),
            schedule: process.schedule.clone(),
            time_zone: process.time_zone.clone(),
        }
    }

    /// The entry of a proto map: (name, process type).
    pub fn into_entry(self) -> (String, pb::ProcessType) {
        let process = pb::ProcessType {
            command: self.command,
            schedule: self.schedule,
            time_zone: self.time_zone,
        };
        (self.name, process)
    }
}

/// A proto map of process types as stored: in the order of their names.
pub fn from_map(processes: &std::collections::HashMap<String, pb::ProcessType>) -> Vec<ProcessType> {
    let mut stored: Vec<ProcessType> = processes
        .iter()
        .map(|(name, process)| ProcessType::from_proto(name, process))
        .collect();
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    stored
}

/// A parsed schedule and the zone its times are local to.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    /// `pattern` in cron syntax (five fields, or six with seconds first)
    /// read in `zone` (an IANA name; empty: UTC). A range that wraps
    /// (22-2, FRI-MON) runs through the end of its cycle. The error says
    /// what to fix.
    pub fn parse(pattern: &str, zone: &str) -> Result<Self, String> {
        let fields: Vec<&str> = pattern.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(format!(
                "must be five cron fields (minute hour day-of-month month weekday) or six with seconds first, \
                 such as \"0 3 * * *\"; {} given",
                fields.len()
            ));
        }
        // The bounds of each field, seconds first.
        const BOUNDS: [(u32, u32); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
        let bounds = &BOUNDS[6 - fields.len()..];
        let unwrapped: Vec<String> = fields
            .iter()
            .zip(bounds)
            .enumerate()
            .map(|(index, (field, bounds))| {
                let names = match fields.len() - index {
                    2 => &MONTHS[..],
                    1 => &WEEKDAYS[..],
                    _ => &[][..],
                };
                unwrap_ranges(field, *bounds, names)
            })
            .collect();
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&unwrapped.join(" "))
            .map_err(|err| format!("is not a cron schedule ({err}), such as \"0 3 * * *\""))?;
        Ok(Self {
            cron,
            zone: zone_of(zone)?,
        })
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

/// An IANA time zone by name; UTC for an empty one.
pub fn zone_of(name: &str) -> Result<chrono_tz::Tz, String> {
    match name {
        "" => Ok(chrono_tz::UTC),
        name => name
            .parse()
            .map_err(|_| format!("time zone {name:?} is not an IANA time zone such as Europe/Paris")),
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A cron field as croner reads it: each range that wraps (`22-2`,
/// `FRI-MON`) written as two that do not (`22-23,0-2`), steps kept; names
/// in a range become numbers (SUN at its end is 7); a list holding `*` is
/// `*`. Anything else is left as it is.
fn unwrap_ranges(field: &str, (low, high): (u32, u32), names: &[&str]) -> String {
    if field.split(',').any(|item| item == "*") {
        return "*".to_owned();
    }
    let number = |text: &str, end: bool| -> Option<u32> {
        match names.iter().position(|name| *name == text) {
            // Weekdays count from 0 (SUN); months from 1 (JAN).
            Some(0) if end && names.len() == 7 => Some(7),
            Some(index) => u32::try_from(index)
                .ok()
                .map(|index| index + u32::from(names.len() == 12)),
            None => text.parse().ok(),
        }
    };
    field
        .split(',')
        .map(|item| {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, format!("/{step}")),
                None => (item, String::new()),
            };
            let Some((from, to)) = range.split_once('-') else {
                return item.to_owned();
            };
            match (number(from, false), number(to, true)) {
                (Some(from), Some(to)) if from > to => format!("{from}-{high}{step},{low}-{to}{step}"),
                (Some(from), Some(to)) => format!("{from}-{to}{step}"),
                _ => item.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
        // A date no month has is no mistake of syntax: it never comes.
        let never = Schedule::parse("0 0 31 2 *", "")
            .ok()
            .map(|never| never.next_after(Utc::now()));
        assert_eq!(never, Some(None));
    }

    #[test]
    fn ranges_that_wrap_run_through_the_end_of_the_cycle() {
        assert_eq!(unwrap_ranges("22-2", (0, 23), &[]), "22-23,0-2");
        assert_eq!(unwrap_ranges("FRI-MON", (0, 7), &WEEKDAYS), "5-7,0-1");
        assert_eq!(unwrap_ranges("MON-SUN", (0, 7), &WEEKDAYS), "1-7");
        assert_eq!(unwrap_ranges("NOV-FEB/2", (1, 12), &MONTHS), "11-12/2,1-2/2");
        assert_eq!(unwrap_ranges("*/5,7,1-3", (0, 59), &[]), "*/5,7,1-3");
        assert_eq!(unwrap_ranges("4-59,*", (0, 59), &[]), "*");
        assert_eq!(unwrap_ranges("7-0", (0, 7), &WEEKDAYS), "7-7,0-0");
        let night = Schedule::parse("0 22-2 * * FRI-MON", "").ok();
        // Saturday 2026-07-04, 22:30 UTC: 23:00 is next.
        let at = Utc.with_ymd_and_hms(2026, 7, 4, 22, 30, 0).unwrap();
        assert_eq!(
            night.and_then(|night| night.next_after(at)),
            Some(Utc.with_ymd_and_hms(2026, 7, 4, 23, 0, 0).unwrap())
        );
    }
}
