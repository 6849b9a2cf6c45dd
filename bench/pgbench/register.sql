-- bench/pgbench/register.sql: the SQL of one POST /v1/prescriptions (registration with the
-- duplicate/contraindication check inline), as the relay issues it, for
--   pgbench -n -M prepared -f register.sql -D rows=N URL
-- (N = rows in bench_register). Captured with log_statement=all from relay serve; see README.md.
--
-- Data: bench_register(k, insurer_number, symbol, number, branch, birth_date, drug_code, document)
-- holds patients that are in the eligibility registry (persons + insured_persons, one coverage),
-- have a history (prescriptions issued within 200 days, YJ codes only) and a new drug_code that
-- causes no hit. The check result is not interpreted here: the statements are those of a clear
-- registration, the relay's commonest path.
--
-- Relay code path (relay/src), in order:
--   http/tx.rs idempotent                    BEGIN (START TRANSACTION)
--   db/idempotency.rs claim                  INSERT idempotency_keys ... ON CONFLICT DO NOTHING
--   http/outages.rs ensure_running
--     -> db/outages.rs running               SELECT ... FROM outages (scope issuing or all)
--   http/prescriptions.rs own_facility
--     -> db/facilities.rs get                SELECT ... FROM facilities
--   http/prescriptions.rs unknown_drug_codes
--     -> db/master.rs yj_code_exists         SELECT EXISTS (... drugs ...), one per drug line
--   db/staff.rs name_of                      SELECT name, name_kana FROM staff
--   http/checks.rs Patient::by_identity
--     -> db/insured.rs person_by_identity    SELECT person_id FROM insured_persons
--     -> db/insured.rs load                  SELECT ... FROM insured_persons (coverages)
--                                            SELECT ... FROM persons
--   http/checks.rs checked/record_check/run_check
--     -> db/master.rs drug_master_loaded     SELECT EXISTS (SELECT 1 FROM drugs)
--     -> db/master.rs ingredients_of_yj_codes  new drugs
--     -> http/checks.rs history_lines
--        -> db/prescriptions.rs history      SELECT ... FROM prescriptions (200 days)
--        -> db/prescriptions.rs dispensings_of  SELECT ... FROM dispensings (skipped without history)
--        -> db/master.rs ingredients_of_yj_codes  history drugs
--     -> db/master.rs contraindications_involving
--     -> db/checks.rs insert                 INSERT INTO checks ... RETURNING
--   db/prescriptions.rs insert               INSERT INTO prescriptions ... ON CONFLICT DO NOTHING RETURNING
--   db/events.rs append                      INSERT INTO prescription_events
--   http/prescriptions.rs check_summary
--     -> db/checks.rs get                    SELECT ... FROM checks (the same row, third time)
--   db/idempotency.rs store                  UPDATE idempotency_keys
--   http/tx.rs idempotent                    COMMIT
-- 21 round trips with history (20 without: no dispensings_of), one drug line, YJ codes.
--
-- Differences from the relay, all forced by pgbench:
-- * The SELECT from bench_register before BEGIN is benchmark overhead the relay does not have
--   (one primary-key lookup plus expressions). It also generates what the relay generates in Rust:
--   uuid v7 ids (time-ordered, built from clock_timestamp(), so index locality matches), the
--   Idempotency-Key, the request hash, the 6-digit exchange number, "today" in Asia/Tokyo, the
--   ingredient names of the new drug (the relay has them from the new-drug ingredient query), and
--   the JSON the relay serialises (event detail, stored response).
-- * pgbench sends a NULL variable as '' (not NULL): parameters the relay binds as NULL on this
--   path are written as NULL literals; refill_count (from the document) is NULLIF(x, '')::smallint.
-- * Arrays the relay builds from query results: the person id is wrapped as ARRAY[id]::uuid[];
--   the history ids and history drug codes are collected by two window columns appended to the
--   history SELECT (hist_n, hist_ids, hist_codes; same WHERE, ORDER BY, LIMIT and rows) and read
--   back with aset. The relay takes the history codes from the dispensed items of dispensed
--   prescriptions and from the prescribed lines otherwise; here they are always the prescribed
--   lines (the same codes when the pharmacy dispensed what was prescribed).
-- * A parameter used twice by the relay ($1 of the contraindication query) is two pgbench
--   parameters with the same value.
-- * The relay draws up to 20 exchange numbers when ON CONFLICT hits an open prescription of the
--   same patient with the same number; this script draws twice (a second clash, about 1e-12 per
--   registration, makes the event INSERT fail on its foreign key).
-- * Every registration adds a registered prescription to its patient's history: with far more
--   transactions than rows, histories grow (and in the relay a repeated patient would get a
--   duplicate hit, i.e. a committed 409, while this script always takes the clear path).

\set k random(1, :rows)
SELECT r.insurer_number, r.symbol, r.number, r.branch, r.birth_date, r.drug_code,
       r.document::text AS document,
       r.document->>'issue_type' AS issue_type,
       r.document->>'issued_on' AS issued_on,
       r.document->>'valid_until' AS valid_until,
       coalesce(r.document->>'refill_count', '') AS refill_count,
       '9918000010' AS clinic, 'doctor-1' AS staff, 'doctor' AS role,
       '{issuing,all}' AS scopes,
       g.idem_key, sha256(convert_to(g.idem_key, 'UTF8')) AS request_hash,
       g.check_id, g.prescription_id, g.exchange_number, g.exchange_number_2,
       ARRAY[r.insurer_number]::text AS insurers, ARRAY[r.symbol]::text AS symbols,
       ARRAY[r.number]::text AS numbers, ARRAY[r.branch]::text AS branches,
       ARRAY[r.drug_code]::text AS new_codes,
       coalesce((SELECT array_agg(di.ingredient ORDER BY di.position) FROM drug_ingredients di
                  WHERE di.yj_code = r.drug_code), '{}')::text AS new_ingredients,
       g.today - 200 AS since,
       'prescribing' AS context, 'clear' AS outcome, false AS details_visible, false AS exclude_own,
       '[]' AS hits, false AS unavailable_acknowledged, 'registered' AS action,
       jsonb_build_object('check_id', g.check_id, 'issue_type', r.document->>'issue_type',
                          'override_check_id', NULL,
                          'check_unavailable_acknowledged', false)::text AS event_detail,
       201 AS response_status,
       jsonb_build_object(
         'check', jsonb_build_object('outcome', 'clear', 'check_id', g.check_id, 'override', NULL,
                                     'unavailable_acknowledged', false),
         'status', 'registered', 'warnings', '[]'::jsonb,
         'issue_type', r.document->>'issue_type', 'valid_until', r.document->>'valid_until',
         'exchange_number', g.exchange_number, 'prescription_id', g.prescription_id)::text
         AS response_body,
       0 AS h_hist_n, '{}' AS h_hist_ids, '{}' AS h_hist_codes, -1 AS p_uses_dispensed
  FROM bench_register r,
       LATERAL (SELECT gen_random_uuid()::text AS idem_key,
                       (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                        || '7' || substr(md5(random()::text), 1, 19))::uuid AS check_id,
                       (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                        || '7' || substr(md5(random()::text), 1, 19))::uuid AS prescription_id,
                       lpad(floor(random() * 1000000)::int::text, 6, '0') AS exchange_number,
                       lpad(floor(random() * 1000000)::int::text, 6, '0') AS exchange_number_2,
                       (now() AT TIME ZONE 'Asia/Tokyo')::date AS today) g
 WHERE r.k = :k \gset

-- http/tx.rs idempotent
START TRANSACTION;

-- db/idempotency.rs claim
INSERT INTO idempotency_keys (facility_code, key, request_hash, response_status, response_body)
     VALUES (:clinic, :idem_key, :request_hash, 0, 'null') ON CONFLICT DO NOTHING;

-- db/outages.rs running (http/outages.rs ensure_running, Suspended::Issuing)
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
SELECT code, kind, name, address, phone, email, fax_email, accepts_e_prescriptions, municipality_code FROM facilities WHERE code = :clinic;

-- db/master.rs yj_code_exists (http/prescriptions.rs unknown_drug_codes; one per drug line)
SELECT EXISTS (SELECT 1 FROM drugs WHERE yj_code = :drug_code);

-- db/staff.rs name_of (the doctor's name for the document)
SELECT name, name_kana FROM staff WHERE facility_code = :clinic AND staff_id = :staff;

-- db/insured.rs person_by_identity (http/checks.rs Patient::by_identity)
SELECT person_id FROM insured_persons
 WHERE insurer_number = :insurer_number AND symbol = :symbol AND number = :number AND branch = :branch
 ORDER BY valid_from DESC LIMIT 1 \gset

-- db/insured.rs load: the coverages, then the person (relay binds a uuid[] of one id)
SELECT person_id, id, insurer_number, symbol, number, branch, valid_from, valid_until,
       documents
  FROM insured_persons WHERE person_id = ANY(ARRAY[:person_id]::uuid[]) ORDER BY valid_from;
SELECT id, name, name_kana, sex, birth_date, address, card_id, certificate_expires_on FROM persons WHERE id = ANY(ARRAY[:person_id]::uuid[]);

-- db/master.rs drug_master_loaded (http/checks.rs run_check: is the master loaded?)
SELECT EXISTS (SELECT 1 FROM drugs);

-- db/master.rs ingredients_of_yj_codes: the new drugs
SELECT yj_code, ingredient, route FROM drug_ingredients WHERE yj_code = ANY(:new_codes::text[]) ORDER BY yj_code, position;

-- db/prescriptions.rs history (http/checks.rs history_lines); the last three columns are
-- this script's addition (see the header)
SELECT id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces,
    count(*) OVER () AS hist_n, array_agg(id) OVER () AS hist_ids,
    '{' || string_agg(translate(jsonb_path_query_array(document, '$.rps[*].drugs[*].code')::text, '[]" ', ''), ',') OVER () || '}' AS hist_codes
  FROM prescriptions
 WHERE (insurer_number, symbol, number, branch) IN
       (SELECT * FROM unnest(:insurers::text[], :symbols::text[], :numbers::text[], :branches::text[])) AND birth_date = :birth_date AND issued_on >= :since AND status <> 'cancelled'
 ORDER BY issued_on DESC, created_at DESC LIMIT 1000 \aset h_

-- db/prescriptions.rs dispensings_of (the relay skips it when the history is empty)
\if :h_hist_n > 0
SELECT prescription_id, use_number, pharmacy_code, pharmacist,
    dispensed_on, items, inquiry, important_note, next_refill_date, recorded_at, claim, check_id,
    override_check_id FROM dispensings
 WHERE prescription_id = ANY(:h_hist_ids) ORDER BY prescription_id, use_number;
\endif

-- db/master.rs ingredients_of_yj_codes: the history drugs (the relay runs it even when empty)
SELECT yj_code, ingredient, route FROM drug_ingredients WHERE yj_code = ANY(:h_hist_codes::text[]) ORDER BY yj_code, position;

-- db/master.rs contraindications_involving (the relay binds one parameter twice)
SELECT ingredient_a, route_a, ingredient_b, route_b, basis FROM contraindications WHERE ingredient_a = ANY(:new_ingredients::text[]) OR ingredient_b = ANY(:new_ingredients::text[]) ORDER BY id;

-- db/checks.rs insert (record_check); qualification_id and unavailable_reason are NULL here
INSERT INTO checks (id, facility_code, staff_id, role, context, qualification_id,
                 person_id, insurer_number, symbol, number, branch, birth_date, outcome,
                 details_visible, exclude_own, drug_codes, hits, unavailable_reason)
     VALUES (:check_id, :clinic, :staff, :role, :context, NULL, :person_id, :insurer_number, :symbol, :number, :branch, :birth_date, :outcome, :details_visible, :exclude_own, :new_codes, :hits, NULL)
  RETURNING id, at, facility_code, context, qualification_id, outcome, details_visible,
       drug_codes, hits, unavailable_reason, staff_id, person_id, birth_date,
       insurer_number, symbol, number, branch;

-- db/prescriptions.rs insert; override_check_id is NULL here
INSERT INTO prescriptions (id, issuer_code, issued_by, issue_type, status, exchange_number,
                 insurer_number, symbol, number, branch, birth_date, issued_on, valid_until,
                 refill_count, document, check_id, override_check_id, check_unavailable_acknowledged)
     VALUES (:prescription_id, :clinic, :staff, :issue_type, 'registered', :exchange_number, :insurer_number, :symbol, :number, :branch, :birth_date, :issued_on, :valid_until, NULLIF(:refill_count, '')::smallint, :document,
             :check_id, NULL, :unavailable_acknowledged)
     ON CONFLICT (insurer_number, symbol, number, branch, exchange_number)
         WHERE status IN ('registered', 'dispensing') DO NOTHING
     RETURNING id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces \aset p_

-- the exchange number was taken by an open prescription of this patient: draw again
\if :p_uses_dispensed < 0
INSERT INTO prescriptions (id, issuer_code, issued_by, issue_type, status, exchange_number,
                 insurer_number, symbol, number, branch, birth_date, issued_on, valid_until,
                 refill_count, document, check_id, override_check_id, check_unavailable_acknowledged)
     VALUES (:prescription_id, :clinic, :staff, :issue_type, 'registered', :exchange_number_2, :insurer_number, :symbol, :number, :branch, :birth_date, :issued_on, :valid_until, NULLIF(:refill_count, '')::smallint, :document,
             :check_id, NULL, :unavailable_acknowledged)
     ON CONFLICT (insurer_number, symbol, number, branch, exchange_number)
         WHERE status IN ('registered', 'dispensing') DO NOTHING
     RETURNING id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces \aset p_
\endif

-- db/events.rs append (action registered)
INSERT INTO prescription_events (prescription_id, actor, facility_code, role, action, detail)
     VALUES (:prescription_id, :staff, :clinic, :role, :action, :event_detail);

-- db/checks.rs get (http/prescriptions.rs check_summary, for the response)
SELECT id, at, facility_code, context, qualification_id, outcome, details_visible,
       drug_codes, hits, unavailable_reason, staff_id, person_id, birth_date,
       insurer_number, symbol, number, branch
  FROM checks WHERE id = :check_id;

-- db/idempotency.rs store
UPDATE idempotency_keys SET response_status = :response_status, response_body = :response_body
 WHERE facility_code = :clinic AND key = :idem_key;

-- http/tx.rs idempotent
COMMIT;
