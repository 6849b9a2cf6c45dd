-- The check that ran inside registration and inside each dispensing (domain.md §7), and what let
-- the change through despite hits: an override (「重複等あり・医師許可」, or the pharmacist's record
-- of a 疑義照会 at dispensing) or an acknowledgement that the check could not run. The override's
-- reason travels with the prescription to the pharmacy.

ALTER TABLE prescriptions
    ADD COLUMN check_id uuid REFERENCES checks (id),
    ADD COLUMN override_check_id uuid REFERENCES checks (id),
    ADD COLUMN check_unavailable_acknowledged boolean NOT NULL DEFAULT false;

ALTER TABLE dispensings
    ADD COLUMN check_id uuid REFERENCES checks (id),
    ADD COLUMN override_check_id uuid REFERENCES checks (id),
    ADD COLUMN check_unavailable_acknowledged boolean NOT NULL DEFAULT false;

-- Overrides are looked up by the check they belong to (the primary key); checks of a patient are
-- never listed, so no further index is needed.
