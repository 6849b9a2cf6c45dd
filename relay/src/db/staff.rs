//! SQL for `staff`.

use super::{DbError, GenericClient};

pub struct StaffMember<'a> {
    pub facility_code: &'a str,
    pub staff_id: &'a str,
    pub role: &'a str,
    pub name: &'a str,
    pub name_kana: Option<&'a str>,
    /// A 目視確認モード passcode has been issued to this account.
    pub visual_check_enabled: bool,
}

pub async fn upsert(c: &impl GenericClient, s: &StaffMember<'_>) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO staff (facility_code, staff_id, role, name, name_kana, visual_check_enabled)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (facility_code, staff_id) DO UPDATE
             SET role = EXCLUDED.role, name = EXCLUDED.name, name_kana = EXCLUDED.name_kana,
                 visual_check_enabled = EXCLUDED.visual_check_enabled",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &s.facility_code,
            &s.staff_id,
            &s.role,
            &s.name,
            &s.name_kana,
            &s.visual_check_enabled,
        ],
    )
    .await?;
    Ok(())
}

/// The registered name (and kana) of a staff member, if known.
pub async fn name_of(
    c: &impl GenericClient,
    facility_code: &str,
    staff_id: &str,
) -> Result<Option<(String, Option<String>)>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT name, name_kana FROM staff WHERE facility_code = $1 AND staff_id = $2",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&facility_code, &staff_id])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Whether the staff member's account may use 目視確認モード (unknown staff: no).
pub async fn visual_check_enabled(
    c: &impl GenericClient,
    facility_code: &str,
    staff_id: &str,
) -> Result<bool, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT visual_check_enabled FROM staff WHERE facility_code = $1 AND staff_id = $2",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&facility_code, &staff_id])
        .await?
        .is_some_and(|r| r.get(0)))
}
