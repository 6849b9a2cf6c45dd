-- Outage fallback (domain.md §8, seed 000 Point 5): a pharmacy that cannot get an e-prescription
-- asks the issuing clinic to cancel it and to reissue on paper or send the contents by FAX (the
-- paper original following by post, checked against the FAX on arrival). One row per case, its
-- state moved only through `fallback_events` (append-only), which is what inspections read.

CREATE TABLE fallbacks (
    id                      uuid PRIMARY KEY,
    prescription_id         uuid NOT NULL REFERENCES prescriptions (id),
    clinic_code             text NOT NULL REFERENCES facilities (code),
    pharmacy_code           text NOT NULL REFERENCES facilities (code),
    reason                  text NOT NULL CHECK (reason <> ''),
    preferred               text NOT NULL CHECK (preferred IN ('paper_reissue', 'fax')),
    note                    text,
    status                  text NOT NULL CHECK (status IN ('requested', 'withdrawn',
                                'paper_reissued', 'faxed', 'dispensed_from_fax',
                                'original_mailed', 'closed')),
    mode                    text CHECK (mode IN ('paper_reissue', 'fax')),
    -- 'applied' at once, or 'pending' while the pharmacy held the e-prescription.
    cancellation            text CHECK (cancellation IN ('applied', 'pending')),
    reissued_prescription_id uuid REFERENCES prescriptions (id),
    requested_at            timestamptz NOT NULL DEFAULT now(),
    resolved_at             timestamptz,
    dispensed_on            date,
    original_mailed_on      date,
    tracking                text,
    original_received_on    date,
    -- 照合: the original matches the FAX, or differs (then original_note is required).
    original_matches        boolean,
    original_note           text,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (original_matches IS NOT FALSE OR original_note IS NOT NULL)
);
-- At most one open case per prescription.
CREATE UNIQUE INDEX fallbacks_open_per_prescription ON fallbacks (prescription_id)
    WHERE status NOT IN ('withdrawn', 'closed', 'paper_reissued');
CREATE INDEX fallbacks_clinic ON fallbacks (clinic_code, status, requested_at);
CREATE INDEX fallbacks_pharmacy ON fallbacks (pharmacy_code, status, requested_at);

CREATE TABLE fallback_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fallback_id   uuid NOT NULL REFERENCES fallbacks (id),
    at            timestamptz NOT NULL DEFAULT now(),
    facility_code text NOT NULL,
    staff_id      text NOT NULL,
    role          text NOT NULL,
    action        text NOT NULL,
    from_status   text,
    to_status     text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX fallback_events_fallback ON fallback_events (fallback_id, id);
CREATE TRIGGER fallback_events_append_only BEFORE UPDATE OR DELETE ON fallback_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER fallback_events_no_truncate BEFORE TRUNCATE ON fallback_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- A paper reissue replaces the e-prescription: the new row names the one it replaces, and the two
-- can never both be dispensed (the new one is receivable only once the old one is cancelled; if
-- the old one is dispensed after all, the new one is cancelled in the same transaction).
ALTER TABLE prescriptions ADD COLUMN replaces uuid REFERENCES prescriptions (id);
CREATE UNIQUE INDEX prescriptions_replaces ON prescriptions (replaces) WHERE replaces IS NOT NULL;
