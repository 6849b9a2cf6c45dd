-- 事前送付 (pre-sending): at the patient's request the issuing clinic forwards a prescription to
-- the pharmacy the patient names, so the pharmacy can prepare before the patient arrives. A presend
-- does not hold the prescription: the receive (引換番号 + insurance identity) stays exclusive and
-- any pharmacy may still receive it. Presending again to another pharmacy supersedes the earlier
-- row (kept for the record); at most one current presend per prescription.

CREATE TABLE presends (
    id              uuid PRIMARY KEY,
    prescription_id uuid NOT NULL REFERENCES prescriptions (id),
    clinic_code     text NOT NULL REFERENCES facilities (code),
    pharmacy_code   text NOT NULL REFERENCES facilities (code),
    presented_by    text NOT NULL,
    presented_at    timestamptz NOT NULL DEFAULT now(),
    prepared_at     timestamptz,
    prepared_by     text,
    superseded_at   timestamptz,
    CHECK ((prepared_at IS NULL) = (prepared_by IS NULL))
);
CREATE UNIQUE INDEX presends_current ON presends (prescription_id) WHERE superseded_at IS NULL;
CREATE INDEX presends_pharmacy ON presends (pharmacy_code, presented_at) WHERE superseded_at IS NULL;
