-- Where each configured poller search stands, so a restart resumes where the
-- last run stopped instead of starting over, and a search the provider
-- refused as invalid stays off until its configuration changes.
CREATE TABLE ingest_poller_state (
    -- 'github' or 'crunchbase'.
    poller          text        NOT NULL,
    -- The search as configured: the GitHub query, or the Crunchbase search
    -- name.
    search          text        NOT NULL,
    -- SHA-256 (hex) of the search's full definition; when it changes the
    -- cursor, validator and disabled flag no longer apply and are reset.
    definition      text        NOT NULL,
    -- The provider's validator for the first page (GitHub ETag), sent as
    -- If-None-Match so an unchanged result costs nothing.
    etag            text,
    -- Where an unfinished pass resumes: the next page URL (GitHub) or the
    -- after_id (Crunchbase). NULL when the last pass reached the end.
    cursor          text,
    -- Set when the provider rejected the search itself (HTTP 422/400); the
    -- search is skipped until its definition changes.
    disabled_reason text,
    last_run_at     timestamptz,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    -- Deals this search put on the log for the first time, over its life.
    emitted         bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (poller, search)
);
