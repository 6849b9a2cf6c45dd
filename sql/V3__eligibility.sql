-- Eligibility (資格確認): persons behind coverages, the card path, the fallback ladder, claim basis,
-- disaster mode, and the audit of every qualification.

-- A person of the eligibility registry. Coverages (insured_persons rows) belong to a person, so an
-- insurance change keeps the earlier coverage and the card still finds the person.
CREATE TABLE persons (
    id                     uuid PRIMARY KEY,
    -- The operator's own key linking coverages of one person (e.g. 個人単位被保険者番号).
    ref                    text UNIQUE CHECK (ref <> ''),
    -- マイナ保険証: the card and its 利用者証明用電子証明書 expiry.
    card_id                text UNIQUE CHECK (card_id <> ''),
    certificate_expires_on date,
    name                   text NOT NULL,
    name_kana              text,
    sex                    text NOT NULL CHECK (sex IN ('male', 'female')),
    birth_date             date NOT NULL,
    address                text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((card_id IS NULL) = (certificate_expires_on IS NULL))
);
-- Disaster mode looks persons up by birth date and sex, then compares names.
CREATE INDEX persons_demographics ON persons (birth_date, sex);

ALTER TABLE insured_persons ADD COLUMN person_id uuid REFERENCES persons (id);

-- Every existing coverage becomes its own person; a card id seen twice stays with the newest row.
INSERT INTO persons (id, card_id, certificate_expires_on, name, name_kana, sex, birth_date, created_at)
SELECT id,
       CASE WHEN rn = 1 THEN card_id END,
       CASE WHEN rn = 1 AND card_id IS NOT NULL THEN certificate_expires_on END,
       name, name_kana, sex, birth_date, created_at
  FROM (SELECT *, row_number() OVER (PARTITION BY card_id ORDER BY created_at DESC) AS rn
          FROM insured_persons) t;
UPDATE insured_persons SET person_id = id;
ALTER TABLE insured_persons ALTER COLUMN person_id SET NOT NULL;
DROP INDEX insured_persons_card;
ALTER TABLE insured_persons DROP COLUMN card_id, DROP COLUMN certificate_expires_on;
CREATE INDEX insured_persons_person ON insured_persons (person_id);

-- 目視確認モード needs a passcode issued to the staff member's account beforehand.
ALTER TABLE staff ADD COLUMN visual_check_enabled boolean NOT NULL DEFAULT false;

-- 全国地方公共団体コード (6 digits with check digit): where a facility is, for disaster areas.
ALTER TABLE facilities ADD COLUMN municipality_code text CHECK (municipality_code ~ '^[0-9]{6}$');

-- 災害時モード: declared by an operator for prefectures and/or municipalities and a period.
CREATE TABLE disasters (
    id             uuid PRIMARY KEY,
    name           text NOT NULL CHECK (name <> ''),
    prefectures    text[] NOT NULL DEFAULT '{}',
    municipalities text[] NOT NULL DEFAULT '{}',
    starts_on      date NOT NULL,
    ends_on        date,
    ended_at       timestamptz,
    declared_by    text NOT NULL,
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(prefectures) + cardinality(municipalities) > 0),
    CHECK (ends_on IS NULL OR ends_on >= starts_on)
);

-- Every eligibility confirmation, confirmed or refused: the audit of 資格確認. Never updated.
CREATE TABLE qualifications (
    id             uuid PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    facility_code  text NOT NULL REFERENCES facilities (code),
    staff_id       text NOT NULL,
    role           text NOT NULL,
    method         text NOT NULL CHECK (method IN ('card', 'mynaportal_screen', 'eligibility_notice',
                       'qualification_certificate', 'verbal_revisit', 'self_declaration',
                       'legacy_insurance_card', 'disaster')),
    outcome        text NOT NULL CHECK (outcome IN ('confirmed', 'refused')),
    refusal_code   text,
    person_id      uuid REFERENCES persons (id),
    -- The insurance identity presented or found, for the revisit rule and the number path.
    insurer_number text,
    symbol         text,
    number         text,
    branch         text,
    birth_date     date,
    claim_basis    text CHECK (claim_basis IN ('current', 'previous', 'unknown')),
    info_sharing   boolean NOT NULL DEFAULT false,
    disaster_id    uuid REFERENCES disasters (id),
    expires_at     timestamptz,
    -- The answer as given: the confirmed qualification, or the refusal problem.
    detail         jsonb NOT NULL,
    CHECK ((outcome = 'refused') = (refusal_code IS NOT NULL)),
    CHECK (outcome = 'refused' OR (claim_basis IS NOT NULL AND expires_at IS NOT NULL))
);
CREATE INDEX qualifications_facility_person ON qualifications (facility_code, person_id)
    WHERE outcome = 'confirmed';
CREATE INDEX qualifications_facility_identity
    ON qualifications (facility_code, insurer_number, symbol, number, branch)
    WHERE outcome = 'confirmed';
CREATE TRIGGER qualifications_append_only
    BEFORE UPDATE OR DELETE ON qualifications
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER qualifications_no_truncate
    BEFORE TRUNCATE ON qualifications
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The qualification the current holder received the prescription with, and the one each
-- dispensing was claimed under (with its claim basis and numbers).
ALTER TABLE prescriptions ADD COLUMN qualification_id uuid REFERENCES qualifications (id);
ALTER TABLE dispensings ADD COLUMN qualification_id uuid REFERENCES qualifications (id),
                        ADD COLUMN claim jsonb;
CREATE INDEX dispensings_pharmacy ON dispensings (pharmacy_code, prescription_id);
