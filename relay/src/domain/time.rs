//! Dates are Japanese calendar dates: "today" is today in Asia/Tokyo, wherever the server runs.

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Asia/Tokyo has had no DST since 1951, but the named zone is used so printed offsets are right.
pub fn tokyo() -> TimeZone {
    TimeZone::get("Asia/Tokyo").unwrap_or_else(|_| TimeZone::fixed(jiff::tz::offset(9)))
}

/// Today's date in Japan.
pub fn today() -> Date {
    jiff::Zoned::now().with_time_zone(tokyo()).date()
}
