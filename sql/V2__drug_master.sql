-- Drug masters: the MHLW 薬価基準収載品目リスト (drugs + drug_ingredients), the レセ電 医薬品マスター
-- (receipt_drugs) and the 併用禁忌 pairs (contraindications). Each is replaced as a whole by an
-- import (relay/src/db/master.rs), so nothing else references these rows by foreign key: a
-- prescription keeps the code and name it was written with, even after a master drops the code.
--
-- Routes are stored as the yakka list's 区分 words; NULL in route columns means "any route" for
-- contraindications and 剤形 3 その他 for receipt_drugs.

CREATE TABLE drugs (
    yj_code         text PRIMARY KEY CHECK (yj_code ~ '^[0-9A-Za-z]{12}$'),
    route           text NOT NULL CHECK (route IN ('内用薬', '注射薬', '外用薬', '歯科用薬剤')),
    ingredient_name text NOT NULL CHECK (ingredient_name <> ''),
    strength        text NOT NULL,
    product_name    text NOT NULL,
    maker           text NOT NULL,
    is_generic      boolean NOT NULL,
    is_brand        boolean NOT NULL,
    price           numeric NOT NULL CHECK (price >= 0),
    imported_at     timestamptz NOT NULL DEFAULT now()
);

-- 一般名コード lookups: the first 9 characters of a YJ code + ZZZ name a product group.
CREATE INDEX drugs_yj_prefix_idx ON drugs (left(yj_code, 9));

-- One row per ingredient of a product (combination products count through each ingredient,
-- domain.md §7); route is copied from drugs so a duplicate check is one index lookup.
CREATE TABLE drug_ingredients (
    yj_code    text NOT NULL REFERENCES drugs (yj_code),
    position   smallint NOT NULL CHECK (position >= 1),
    ingredient text NOT NULL CHECK (ingredient <> ''),
    route      text NOT NULL CHECK (route IN ('内用薬', '注射薬', '外用薬', '歯科用薬剤')),
    PRIMARY KEY (yj_code, position)
);

CREATE INDEX drug_ingredients_ingredient_route_idx ON drug_ingredients (ingredient, route);

-- The レセ電 master is published on its own schedule, so yj_code is not a foreign key to drugs.
CREATE TABLE receipt_drugs (
    receipt_code    text PRIMARY KEY CHECK (receipt_code ~ '^6[0-9]{8}$'),
    name            text NOT NULL CHECK (name <> ''),
    unit            text NOT NULL,
    route           text NULL CHECK (route IN ('内用薬', '注射薬', '外用薬', '歯科用薬剤')),
    yj_code         text NOT NULL,
    generic_code    text NULL,
    generic_name    text NULL,
    discontinued_on date NULL,
    imported_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX receipt_drugs_yj_code_idx ON receipt_drugs (yj_code);

CREATE TABLE contraindications (
    id           bigserial PRIMARY KEY,
    ingredient_a text NOT NULL CHECK (ingredient_a <> ''),
    route_a      text NULL CHECK (route_a IN ('内用薬', '注射薬', '外用薬', '歯科用薬剤')),
    ingredient_b text NOT NULL CHECK (ingredient_b <> ''),
    route_b      text NULL CHECK (route_b IN ('内用薬', '注射薬', '外用薬', '歯科用薬剤')),
    basis        text NOT NULL DEFAULT '',
    imported_at  timestamptz NOT NULL DEFAULT now()
);

-- NULL (any route) must collide with NULL, which a plain UNIQUE constraint would not do.
CREATE UNIQUE INDEX contraindications_pair_key
    ON contraindications (ingredient_a, coalesce(route_a, '*'), ingredient_b, coalesce(route_b, '*'));

-- Lookups come from either side of a pair; the unique index above serves ingredient_a.
CREATE INDEX contraindications_ingredient_b_idx ON contraindications (ingredient_b);
