-- Named 併用禁忌 tables: every pair belongs to one table (`seed` for the curated seed, e.g.
-- `vendor-2026-11` for a licensed table), so an import replaces or adds to one table and leaves
-- the others alone (relay/src/contraindication_import.rs). The check engine reads the pairs of all
-- tables together, a pair listed by several tables counting once (db/master.rs).
--
-- The pairs imported before this migration came from the seed: they become table `seed`.

ALTER TABLE contraindications
    ADD COLUMN table_name text NOT NULL DEFAULT 'seed'
        CHECK (table_name ~ '^[a-z0-9][a-z0-9._-]{0,63}$');
-- From now on every insert names its table.
ALTER TABLE contraindications ALTER COLUMN table_name DROP DEFAULT;

-- A pair is unique within its table (the import also refuses the reversed order, which an
-- expression index could only express through a text encoding of both sides); the same pair may
-- be listed by several tables.
DROP INDEX contraindications_pair_key;
CREATE UNIQUE INDEX contraindications_pair_key
    ON contraindications (table_name, ingredient_a, coalesce(route_a, '*'), ingredient_b,
                          coalesce(route_b, '*'));

-- Lookups come from either side of a pair; the unique index no longer leads with ingredient_a.
CREATE INDEX contraindications_ingredient_a_idx ON contraindications (ingredient_a);
