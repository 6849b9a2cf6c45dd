-- Duplicate and contraindication checks (domain.md §7): each check as run, the verbal consents
-- that revealed its causing drugs, and the doctor's override. All three are append-only: they
-- are the record of who saw what about a patient's medication, and why a warning was overridden.

CREATE TABLE checks (
    id                uuid PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT now(),
    facility_code     text NOT NULL REFERENCES facilities (code),
    staff_id          text NOT NULL,
    role              text NOT NULL,
    context           text NOT NULL CHECK (context IN ('prescribing', 'dispensing')),
    qualification_id  uuid REFERENCES qualifications (id),
    person_id         uuid REFERENCES persons (id),
    insurer_number    text,
    symbol            text,
    number            text,
    branch            text,
    birth_date        date NOT NULL,
    outcome           text NOT NULL CHECK (outcome IN ('clear', 'hits', 'unavailable')),
    -- Consent to view past medication chosen on the card reader (and sharing allowed).
    details_visible   boolean NOT NULL,
    exclude_own       boolean NOT NULL DEFAULT false,
    -- The drug codes checked, so an override covers exactly these drugs.
    drug_codes        text[] NOT NULL,
    -- Every hit with its causes, including the fields never shown (sources, facilities).
    hits              jsonb NOT NULL,
    unavailable_reason text
);
CREATE INDEX checks_facility ON checks (facility_code, at);

CREATE TABLE check_consents (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id      uuid NOT NULL REFERENCES checks (id),
    at            timestamptz NOT NULL DEFAULT now(),
    facility_code text NOT NULL,
    staff_id      text NOT NULL,
    role          text NOT NULL,
    hit_ids       text[] NOT NULL,
    note          text,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX check_consents_check ON check_consents (check_id, expires_at);

CREATE TABLE check_overrides (
    check_id      uuid PRIMARY KEY REFERENCES checks (id),
    at            timestamptz NOT NULL DEFAULT now(),
    facility_code text NOT NULL,
    staff_id      text NOT NULL,
    role          text NOT NULL,
    reason        text NOT NULL CHECK (reason <> '')
);

CREATE TRIGGER checks_append_only BEFORE UPDATE OR DELETE ON checks
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER check_consents_append_only BEFORE UPDATE OR DELETE ON check_consents
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER check_overrides_append_only BEFORE UPDATE OR DELETE ON check_overrides
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER checks_no_truncate BEFORE TRUNCATE ON checks
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER check_consents_no_truncate BEFORE TRUNCATE ON check_consents
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER check_overrides_no_truncate BEFORE TRUNCATE ON check_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The history of a patient: prescriptions by identity and birth date, newest first, and the
-- dispensing results of those prescriptions (dispensings' primary key starts with the id).
CREATE INDEX prescriptions_history
    ON prescriptions (insurer_number, symbol, number, branch, birth_date, issued_on)
    WHERE status <> 'cancelled';
