-- A fallback request the pharmacy made while the relay was unreachable: pharmacy-client mailed the
-- clinic directly and queued the request; `sync` uploads it later. The case keeps when it was really
-- asked for and when the clinic was mailed, and the client's local id so that the same queued
-- record can never open a second case at this pharmacy.

ALTER TABLE fallbacks
    ADD COLUMN offline_local_id        text CHECK (offline_local_id <> ''),
    ADD COLUMN offline_requested_at    timestamptz,
    ADD COLUMN clinic_mailed_directly_at timestamptz,
    ADD CHECK ((offline_local_id IS NULL) = (offline_requested_at IS NULL));

CREATE UNIQUE INDEX fallbacks_offline_local_id ON fallbacks (pharmacy_code, offline_local_id)
    WHERE offline_local_id IS NOT NULL;
