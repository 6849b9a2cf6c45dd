-- The mail outbox (relay/src/db/outbox.rs, relay/src/mail/). A message is inserted in the same
-- transaction as the state change it reports, so it exists exactly when that change committed; the
-- worker delivers it later (at least once), each attempt in its own transaction that locks the row
-- with FOR UPDATE SKIP LOCKED, so any number of relays can run the worker on one database.

CREATE TABLE outbox (
    id              uuid PRIMARY KEY,                      -- v7: ordered by creation
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- What the message is about, for operators: fallback_requested, fallback_fax, reminder_held, …
    kind            text NOT NULL CHECK (kind <> ''),
    recipients      text[] NOT NULL CHECK (cardinality(recipients) > 0),
    subject         text NOT NULL,
    body            text NOT NULL,
    -- At most one message per key, ever (reminders are sent once however often the job runs).
    dedupe_key      text UNIQUE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text,
    sent_at         timestamptz,
    -- `<{id}@{domain of [mail] from}>`, recorded with the first attempt and reused by every retry,
    -- so a message delivered twice (a worker killed before it committed) is recognisably one.
    message_id      text,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);

-- The worker's pick: due pending messages, oldest due first.
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at, id) WHERE status = 'pending';
-- The operators' listing by status, newest first.
CREATE INDEX outbox_status_idx ON outbox (status, created_at DESC);

CREATE TABLE outbox_attachments (
    outbox_id    uuid NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    position     integer NOT NULL CHECK (position >= 0),
    filename     text NOT NULL CHECK (filename <> ''),
    content_type text NOT NULL,
    bytes        bytea NOT NULL,
    PRIMARY KEY (outbox_id, position)
);
