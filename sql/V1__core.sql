-- Core schema: facilities, staff, the eligibility registry, prescriptions, dispensing results,
-- the append-only event log, idempotency keys and failed-receive counters.
-- Identifiers are stored as text: leading zeros are significant (引換番号, 保険者番号, 枝番).

CREATE TABLE facilities (
    code                    text PRIMARY KEY CHECK (code ~ '^[0-9]{10}$'),
    kind                    text NOT NULL CHECK (kind IN ('clinic', 'pharmacy')),
    name                    text NOT NULL CHECK (name <> ''),
    address                 text,
    phone                   text,
    email                   text NOT NULL,
    fax_email               text,
    accepts_e_prescriptions boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Staff known to the relay (names printed on documents). Tokens are stateless: a staff row is not
-- required to call the API.
CREATE TABLE staff (
    facility_code text NOT NULL REFERENCES facilities (code),
    staff_id      text NOT NULL,
    role          text NOT NULL CHECK (role IN ('doctor', 'clinic_clerk', 'pharmacist', 'pharmacy_clerk', 'admin')),
    name          text NOT NULL,
    name_kana     text,
    PRIMARY KEY (facility_code, staff_id)
);

-- The eligibility registry (資格確認). One row per coverage period; earlier coverages are kept.
CREATE TABLE insured_persons (
    id                     uuid PRIMARY KEY,
    insurer_number         text NOT NULL CHECK (insurer_number ~ '^([0-9]{6}|[0-9]{8})$'),
    symbol                 text NOT NULL DEFAULT '',
    number                 text NOT NULL CHECK (number <> ''),
    branch                 text NOT NULL CHECK (branch ~ '^[0-9]{2}$'),
    name                   text NOT NULL,
    name_kana              text,
    sex                    text NOT NULL CHECK (sex IN ('male', 'female')),
    birth_date             date NOT NULL,
    valid_from             date NOT NULL,
    valid_until            date,
    card_id                text,
    certificate_expires_on date,
    documents              text[] NOT NULL DEFAULT '{}',
    created_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_until IS NULL OR valid_until >= valid_from),
    UNIQUE (insurer_number, symbol, number, branch, valid_from)
);
CREATE INDEX insured_persons_card ON insured_persons (card_id) WHERE card_id IS NOT NULL;

CREATE TABLE prescriptions (
    id                     uuid PRIMARY KEY,
    issuer_code            text NOT NULL REFERENCES facilities (code),
    issued_by              text NOT NULL,
    issue_type             text NOT NULL CHECK (issue_type IN ('electronic', 'paper_with_exchange_number')),
    status                 text NOT NULL CHECK (status IN ('registered', 'dispensing', 'dispensed', 'cancelled', 'expired')),
    exchange_number        text NOT NULL CHECK (exchange_number ~ '^[0-9]{6,16}$'),
    -- The insurance identity a pharmacy must present with the 引換番号 (copied out of `document`).
    insurer_number         text NOT NULL,
    symbol                 text NOT NULL,
    number                 text NOT NULL,
    branch                 text NOT NULL,
    birth_date             date NOT NULL,
    issued_on              date NOT NULL,
    valid_until            date NOT NULL CHECK (valid_until >= issued_on),
    refill_count           smallint CHECK (refill_count IN (2, 3)),
    uses_dispensed         smallint NOT NULL DEFAULT 0,
    next_refill_date       date,
    -- The validated registration, exactly as returned to clients. Never updated.
    document               jsonb NOT NULL,
    holder_code            text REFERENCES facilities (code),
    held_since             timestamptz,
    cancellation_pending   boolean NOT NULL DEFAULT false,
    cancellation_reason    text,
    cancelled_at           timestamptz,
    has_important_note     boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'dispensing' OR (holder_code IS NOT NULL AND held_since IS NOT NULL)),
    CHECK (NOT cancellation_pending OR status = 'dispensing')
);
-- 引換番号 are unique among a patient's open prescriptions; the number generator retries on
-- a violation of this index.
CREATE UNIQUE INDEX prescriptions_open_exchange_number
    ON prescriptions (insurer_number, symbol, number, branch, exchange_number)
    WHERE status IN ('registered', 'dispensing');
CREATE INDEX prescriptions_identity ON prescriptions (insurer_number, symbol, number, branch, issued_on);
CREATE INDEX prescriptions_issuer ON prescriptions (issuer_code, issued_on);
CREATE INDEX prescriptions_holder ON prescriptions (holder_code, held_since) WHERE status = 'dispensing';

-- 調剤結果: one row per use (refill prescriptions have up to three).
CREATE TABLE dispensings (
    prescription_id  uuid NOT NULL REFERENCES prescriptions (id),
    use_number       smallint NOT NULL CHECK (use_number BETWEEN 1 AND 3),
    pharmacy_code    text NOT NULL REFERENCES facilities (code),
    pharmacist       text NOT NULL,
    dispensed_on     date NOT NULL,
    items            jsonb NOT NULL,
    inquiry          jsonb,
    important_note   text,
    next_refill_date date,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prescription_id, use_number)
);

-- Append-only: who did what to which prescription, when.
CREATE TABLE prescription_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prescription_id uuid NOT NULL REFERENCES prescriptions (id),
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor           text NOT NULL,
    facility_code   text NOT NULL,
    role            text NOT NULL,
    action          text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX prescription_events_prescription ON prescription_events (prescription_id, id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER prescription_events_append_only
    BEFORE UPDATE OR DELETE ON prescription_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER prescription_events_no_truncate
    BEFORE TRUNCATE ON prescription_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Idempotency-Key: the stored outcome of a state-changing POST, written in the same transaction as
-- the change itself, so a stored response always describes a committed change.
CREATE TABLE idempotency_keys (
    facility_code   text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    response_status smallint NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (facility_code, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Failed 引換番号 lookups, for throttling guessing. The identity is a hash, not the numbers.
CREATE TABLE receive_failures (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    pharmacy_code text NOT NULL,
    identity_hash bytea NOT NULL
);
CREATE INDEX receive_failures_identity ON receive_failures (identity_hash, at);
CREATE INDEX receive_failures_pharmacy ON receive_failures (pharmacy_code, at);
