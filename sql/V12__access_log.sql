-- Reads of a patient's prescriptions (閲覧記録): who looked, where, when. Writes are already in
-- `prescription_events`, 資格確認 in `qualifications`, revealed check details in `check_consents`;
-- this table adds the reads that change nothing (a prescription opened, listed by card, found by
-- the clinic's search, printed as a document) and the patient's own look at this log, so that
-- "who looked at my prescriptions" has a complete answer (GET /v1/qualifications/{id}/access-log).
-- Append-only like every audit table.
CREATE TABLE access_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    prescription_id uuid REFERENCES prescriptions (id),
    -- Set instead of a prescription for reads of the person's record as a whole.
    person_id       uuid REFERENCES persons (id),
    facility_code   text NOT NULL,
    staff_id        text NOT NULL,
    role            text NOT NULL,
    action          text NOT NULL CHECK (action IN ('viewed', 'listed', 'searched', 'document', 'access_log_viewed')),
    detail          jsonb NOT NULL DEFAULT '{}',
    CHECK ((prescription_id IS NULL) <> (person_id IS NULL))
);
CREATE INDEX access_log_prescription ON access_log (prescription_id, at) WHERE prescription_id IS NOT NULL;
CREATE INDEX access_log_person ON access_log (person_id, at) WHERE person_id IS NOT NULL;

CREATE TRIGGER access_log_append_only
    BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER access_log_no_truncate
    BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The patient's log looks up checks by person or insurance identity.
CREATE INDEX checks_person ON checks (person_id, at) WHERE person_id IS NOT NULL;
CREATE INDEX checks_identity ON checks (insurer_number, symbol, number, branch, birth_date);
CREATE INDEX qualifications_person ON qualifications (person_id, at) WHERE outcome = 'confirmed';

-- The audit triggers fire whatever the session's replication role: `SET session_replication_role
-- = replica` (how a superuser loads data without triggers) must not switch them off. Every
-- trigger of the schema is an audit trigger.
DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT c.relname, g.tgname
               FROM pg_trigger g
               JOIN pg_class c ON c.oid = g.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = current_schema() AND NOT g.tgisinternal
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ALWAYS TRIGGER %I', t.relname, t.tgname);
    END LOOP;
END $$;
