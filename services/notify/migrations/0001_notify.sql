-- Notify's own state: what it needs to know about deals to decide who hears
-- about an event, the feed, subscriptions, and the delivery log (outbox).

-- Every deal-log event applied, so a redelivered record is dropped.
CREATE TABLE applied_events (
    event_id    text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- What notify knows about a deal, projected from the log.
CREATE TABLE deals (
    deal_id     text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    sector      text NOT NULL DEFAULT '',
    owner_id    text NOT NULL DEFAULT ''
);

-- LPs a deal was shared with.
CREATE TABLE deal_shares (
    deal_id     text NOT NULL,
    lp_id       text NOT NULL,
    PRIMARY KEY (deal_id, lp_id)
);
CREATE INDEX deal_shares_by_lp ON deal_shares (lp_id);

-- Votes and the LPs eligible to vote.
CREATE TABLE votes (
    vote_id         text PRIMARY KEY,
    deal_id         text NOT NULL,
    eligible_lp_ids text[] NOT NULL DEFAULT '{}'
);

-- The live feed: one row per event people can hear about. Rows are inserted
-- under a transaction-scoped advisory lock, so ids become visible in order
-- and a reader tailing `id > cursor` never skips one.
CREATE TABLE feed (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    deal_id     text NOT NULL,
    trigger     integer NOT NULL,
    summary     text NOT NULL,
    occurred_at timestamptz NOT NULL,
    event       bytea NOT NULL
);
CREATE INDEX feed_by_deal ON feed (deal_id, id);

-- Who hears about what, and how.
CREATE TABLE subscriptions (
    id              uuid PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    subscriber      text NOT NULL,
    subscriber_role text NOT NULL,
    lp_id           text,
    triggers        integer[] NOT NULL,
    min_score       double precision,
    sectors         text[] NOT NULL DEFAULT '{}',
    deal_ids        text[] NOT NULL DEFAULT '{}',
    owned_deals_only boolean NOT NULL DEFAULT false,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'email')),
    -- The webhook URL or the email address.
    target          text NOT NULL,
    secret          text,
    webhook_format  text NOT NULL DEFAULT 'json' CHECK (webhook_format IN ('json', 'slack')),
    digest          boolean NOT NULL DEFAULT false,
    origin          text NOT NULL CHECK (origin IN ('api', 'config')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX subscriptions_live ON subscriptions (subscriber) WHERE deleted_at IS NULL;

-- The delivery log and outbox. A notification reaches a recipient on a
-- channel at most once: the key is (notification_id, recipient, channel).
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    notification_id uuid NOT NULL,
    recipient       text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'email')),
    subscription_id uuid,
    event_id        text,
    -- pending: to send; digest: waiting for the daily digest; digested:
    -- folded into digest `digest_id`; delivered; dead (retry budget spent or
    -- a permanent failure); cancelled (subscription deleted).
    status          text NOT NULL CHECK (status IN ('pending', 'digest', 'digested', 'delivered', 'dead', 'cancelled')),
    -- Webhook: the JSON body. Email: {"subject": ..., "text": ...}.
    body            text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    last_status     integer,
    digest_id       uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (notification_id, recipient, channel)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_digest ON deliveries (recipient) WHERE status = 'digest';

-- Every attempt at a delivery, for operators.
CREATE TABLE delivery_attempts (
    delivery_id uuid NOT NULL REFERENCES deliveries (id),
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status      integer,
    error       text,
    duration_ms bigint NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
