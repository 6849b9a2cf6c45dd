-- bench/pgbench/receive.sql: the SQL of one POST /v1/prescriptions/receive (receive by 引換番号
-- plus the insurance identity and birth date, by a pharmacist, no qualification_id), as the
-- relay issues it, for
--   pgbench -n -M prepared -f receive.sql -D rows=N URL
-- (N = rows in bench_receive). Captured with log_statement=all from relay serve; see README.md.
--
-- Data: bench_receive(k, prescription_id, exchange_number, insurer_number, symbol, number, branch,
-- birth_date) holds prescriptions in status registered, receivable today, with a check_id (every
-- registration stores one). The receiving pharmacy is 9948000014 (pharmacist-1), as in the demo
-- seed and the benchmark data generator.
--
-- Relay code path (relay/src), in order:
--   http/tx.rs idempotent                    BEGIN (START TRANSACTION)
--   db/idempotency.rs claim                  INSERT idempotency_keys ... ON CONFLICT DO NOTHING
--   http/outages.rs ensure_running
--     -> db/outages.rs running               SELECT ... FROM outages (scope all)
--   http/prescriptions.rs own_facility
--     -> db/facilities.rs get                SELECT ... FROM facilities
--   db/throttle.rs serialize                 SELECT pg_advisory_xact_lock(pharmacy), …(identity)
--   db/throttle.rs identity_failures         WITH w AS (... receive_failures by identity hash)
--   db/throttle.rs pharmacy_failures         WITH w AS (... by pharmacy), pipelined with the above
--   db/prescriptions.rs receive_by_number    UPDATE prescriptions ... RETURNING (the receive)
--   http/prescriptions.rs received
--     -> db/events.rs append                 INSERT INTO prescription_events (received)
--     -> http/prescriptions.rs view
--        one pipeline (tokio::try_join!):
--        -> db/facilities.rs name_of         SELECT name FROM facilities (issuer)
--        -> db/facilities.rs name_of         SELECT name FROM facilities (holder = the caller)
--        -> http/prescriptions.rs check_summary
--           -> db/checks.rs get              SELECT ... FROM checks (the registration's check)
--        (db/prescriptions.rs dispensings is skipped while uses_dispensed = 0)
--   db/idempotency.rs store                  UPDATE idempotency_keys (the whole view as JSON)
--   http/tx.rs idempotent                    COMMIT
-- 14 statements in 11 round trips (pgbench's \startpipeline … \endpipeline as the relay pipelines).
--
-- When the UPDATE matches no row (a k drawn again: the prescription is already held), the relay
-- runs db/prescriptions.rs find_by_number and answers from the state it finds. This script takes
-- the branch of a second pharmacy losing the race (409 HELD_BY_ANOTHER_PHARMACY): find_by_number,
-- db/facilities.rs name_of (the holder named in the problem), ROLLBACK (10 round trips, nothing
-- written). With one pharmacy the relay would instead answer the repeat as its own hold (the view
-- and the stored response, committed); give the runner far more rows than transactions so that
-- repeats stay rare (random() draws with replacement; pgbench cannot hand each k out once).
--
-- Differences from the relay, all forced by pgbench:
-- * The SELECT from bench_receive before BEGIN is benchmark overhead the relay does not have (one
--   primary-key lookup plus expressions). It also computes what the relay computes in Rust: the
--   Idempotency-Key and request hash, the identity hash of the throttle (sha256 of the four
--   identity fields each followed by a zero byte, as domain/identifiers.rs throttle_key), "today"
--   in Asia/Tokyo, the event detail, and the throttle settings of config/default.toml.
-- * qualification_id, which the relay binds as a NULL parameter, is a NULL literal (pgbench sends
--   a NULL variable as '').
-- * Parameters the relay binds twice ($2 of the throttle queries, $6 and $8 of the UPDATE) are two
--   pgbench parameters with the same value.
-- * The stored response is the prescription document returned by the UPDATE (about 0.9 kB); the
--   relay stores the whole PrescriptionView, about 1.5 kB of JSON: both stay below the 2 kB TOAST
--   threshold, so this writes about 0.6 kB less per receive.

\set k random(1, :rows)
SELECT b.prescription_id, b.exchange_number, b.insurer_number, b.symbol, b.number, b.branch,
       b.birth_date,
       '9948000014' AS pharmacy, 'pharmacist-1' AS staff, 'pharmacist' AS role,
       '{all}' AS scopes,
       g.idem_key, sha256(convert_to(g.idem_key, 'UTF8')) AS request_hash,
       sha256(convert_to(b.insurer_number, 'UTF8') || '\x00'::bytea
              || convert_to(b.symbol, 'UTF8') || '\x00'::bytea
              || convert_to(b.number, 'UTF8') || '\x00'::bytea
              || convert_to(b.branch, 'UTF8') || '\x00'::bytea) AS identity_hash,
       600 AS window_seconds, 5 AS identity_limit, 30 AS pharmacy_limit,
       (now() AT TIME ZONE 'Asia/Tokyo')::date AS today,
       'received' AS action,
       '{"via": "exchange_number", "method": null, "disaster": null, "claim_basis": null, "qualification_id": null}' AS event_detail,
       200 AS response_status,
       -1 AS r_uses_dispensed, '' AS f_holder_code
  FROM bench_receive b,
       LATERAL (SELECT gen_random_uuid()::text AS idem_key) g
 WHERE b.k = :k \gset

-- http/tx.rs idempotent
START TRANSACTION;

-- db/idempotency.rs claim
INSERT INTO idempotency_keys (facility_code, key, request_hash, response_status, response_body)
     VALUES (:pharmacy, :idem_key, :request_hash, 0, 'null') ON CONFLICT DO NOTHING;

-- db/outages.rs running (http/outages.rs ensure_running, Suspended::Receiving)
SELECT id, scope, starts_at, ends_at, note, declared_at,
    declared_by_facility, declared_by_staff, ended_at, ended_by_facility, ended_by_staff,
    CASE WHEN ended_at IS NOT NULL THEN 'ended'
         WHEN starts_at > now() THEN 'scheduled'
         WHEN ends_at <= now() THEN 'elapsed'
         ELSE 'active' END,
    CASE WHEN ended_at IS NULL AND ends_at > now()
         THEN ceil(extract(epoch FROM ends_at - now()))::bigint END FROM outages
 WHERE ended_at IS NULL AND starts_at <= now() AND (ends_at IS NULL OR ends_at > now()) AND scope = ANY(:scopes)
 ORDER BY ends_at DESC NULLS FIRST, starts_at, id LIMIT 1;

-- db/facilities.rs get (http/prescriptions.rs own_facility)
SELECT code, kind, name, address, phone, email, fax_email, accepts_e_prescriptions, municipality_code FROM facilities WHERE code = :pharmacy;

-- db/throttle.rs serialize (lookups for one pharmacy or identity run in turn)
SELECT pg_advisory_xact_lock(hashtextextended('receive_failures/pharmacy/' || :pharmacy, 0)),
       pg_advisory_xact_lock(hashtextextended('receive_failures/identity/' || encode(:identity_hash, 'hex'), 0));

\startpipeline
-- db/throttle.rs identity_failures
WITH w AS (SELECT at FROM receive_failures
            WHERE identity_hash = :identity_hash AND at > now() - make_interval(secs => :window_seconds))
SELECT (SELECT count(*) FROM w),
       (SELECT extract(epoch FROM at + make_interval(secs => :window_seconds) - now())::float8
          FROM w ORDER BY at DESC OFFSET greatest(:identity_limit::bigint - 1, 0) LIMIT 1);

-- db/throttle.rs pharmacy_failures
WITH w AS (SELECT at FROM receive_failures
            WHERE pharmacy_code = :pharmacy AND at > now() - make_interval(secs => :window_seconds))
SELECT (SELECT count(*) FROM w),
       (SELECT extract(epoch FROM at + make_interval(secs => :window_seconds) - now())::float8
          FROM w ORDER BY at DESC OFFSET greatest(:pharmacy_limit::bigint - 1, 0) LIMIT 1);

\endpipeline

-- db/prescriptions.rs receive_by_number; qualification_id is NULL here
UPDATE prescriptions
   SET status = 'dispensing', holder_code = :pharmacy, held_since = now(), updated_at = now(),
       qualification_id = NULL
 WHERE exchange_number = :exchange_number AND insurer_number = :insurer_number AND symbol = :symbol
   AND number = :number AND branch = :branch AND (:birth_date::date IS NULL OR birth_date = :birth_date)
   AND status = 'registered'
   AND CASE WHEN uses_dispensed = 0 OR next_refill_date IS NULL THEN :today <= valid_until
       ELSE :today BETWEEN next_refill_date - 7 AND next_refill_date + 7 END
   AND (replaces IS NULL OR EXISTS (SELECT 1 FROM prescriptions replaced
                                     WHERE replaced.id = prescriptions.replaces
                                       AND replaced.status = 'cancelled'))
RETURNING id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces \aset r_

\if :r_uses_dispensed >= 0

-- db/events.rs append (http/prescriptions.rs received)
INSERT INTO prescription_events (prescription_id, actor, facility_code, role, action, detail)
     VALUES (:r_id, :staff, :pharmacy, :role, :action, :event_detail);

\startpipeline
-- db/facilities.rs name_of, issuer then holder (http/prescriptions.rs view)
SELECT name FROM facilities WHERE code = :r_issuer_code;
SELECT name FROM facilities WHERE code = :r_holder_code;

-- db/checks.rs get (http/prescriptions.rs check_summary; no override on this path)
SELECT id, at, facility_code, context, qualification_id, outcome, details_visible,
       drug_codes, hits, unavailable_reason, staff_id, person_id, birth_date,
       insurer_number, symbol, number, branch
  FROM checks WHERE id = :r_check_id;

\endpipeline

-- db/idempotency.rs store
UPDATE idempotency_keys SET response_status = :response_status, response_body = :r_document
 WHERE facility_code = :pharmacy AND key = :idem_key;

-- http/tx.rs idempotent
COMMIT;

\else

-- nothing receivable matched: db/prescriptions.rs find_by_number (http/prescriptions.rs receive)
SELECT id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces FROM prescriptions
 WHERE exchange_number = :exchange_number AND insurer_number = :insurer_number AND symbol = :symbol
   AND number = :number AND branch = :branch AND (:birth_date::date IS NULL OR birth_date = :birth_date)
 ORDER BY (status IN ('registered', 'dispensing')) DESC, created_at DESC
 LIMIT 1 \aset f_

-- db/facilities.rs name_of (http/prescriptions.rs why_not_received: held by another pharmacy)
SELECT name FROM facilities WHERE code = :f_holder_code;

-- the 409 drops the transaction (tokio-postgres sends ROLLBACK)
ROLLBACK;

\endif
