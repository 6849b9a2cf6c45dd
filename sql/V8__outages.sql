-- Declared outages (計画停止・障害の宣言). While one runs, the relay refuses registration (scope
-- `issuing`) or registration and every receive (scope `all`) with 503 SERVICE_SUSPENDED, telling
-- clinics to issue paper and pharmacies to use the paper/FAX fallback.
--
-- An outage row changes once: when it is ended (`ended_at`, `ended_by_*`). Everything else is
-- fixed at declaration, and rows are never deleted (trigger). The audit trail is `outage_events`,
-- strictly append-only like `prescription_events`. The row keeps its end in place so that "is an
-- outage running now" stays one indexed lookup on one table (`outages_open`).
CREATE TABLE outages (
    id                   uuid PRIMARY KEY,
    scope                text NOT NULL CHECK (scope IN ('issuing', 'all')),
    starts_at            timestamptz NOT NULL,
    -- The planned end; NULL: until someone ends it.
    ends_at              timestamptz,
    note                 text NOT NULL CHECK (btrim(note) <> ''),
    declared_at          timestamptz NOT NULL DEFAULT now(),
    declared_by_facility text NOT NULL,
    declared_by_staff    text NOT NULL,
    ended_at             timestamptz,
    ended_by_facility    text,
    ended_by_staff       text,
    CHECK (ends_at IS NULL OR ends_at > starts_at),
    CHECK ((ended_at IS NULL) = (ended_by_staff IS NULL)
       AND (ended_at IS NULL) = (ended_by_facility IS NULL))
);
-- Outages not ended yet: what every suspended-or-not check reads.
CREATE INDEX outages_open ON outages (starts_at) WHERE ended_at IS NULL;
CREATE INDEX outages_starts ON outages (starts_at DESC, id DESC);

-- An outage is ended at most once and never edited otherwise; never deleted or truncated.
CREATE FUNCTION outages_end_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'outages are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.ended_at IS NOT NULL OR NEW.ended_at IS NULL
       OR (NEW.id, NEW.scope, NEW.starts_at, NEW.ends_at, NEW.note, NEW.declared_at,
           NEW.declared_by_facility, NEW.declared_by_staff)
          IS DISTINCT FROM
          (OLD.id, OLD.scope, OLD.starts_at, OLD.ends_at, OLD.note, OLD.declared_at,
           OLD.declared_by_facility, OLD.declared_by_staff)
    THEN
        RAISE EXCEPTION 'an outage can only be ended, and only once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER outages_end_only
    BEFORE UPDATE OR DELETE ON outages
    FOR EACH ROW EXECUTE FUNCTION outages_end_only();
CREATE TRIGGER outages_no_truncate
    BEFORE TRUNCATE ON outages
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Append-only: who declared or ended which outage, when (one row of each kind per outage).
CREATE TABLE outage_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outage_id     uuid NOT NULL REFERENCES outages (id),
    action        text NOT NULL CHECK (action IN ('declared', 'ended')),
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor         text NOT NULL,
    facility_code text NOT NULL,
    role          text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}',
    UNIQUE (outage_id, action)
);
CREATE TRIGGER outage_events_append_only
    BEFORE UPDATE OR DELETE ON outage_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER outage_events_no_truncate
    BEFORE TRUNCATE ON outage_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
