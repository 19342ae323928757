-- im1-revalidator: the credentials table, its status view and the audit trail.
--
-- One row per RP user. The token is stored encrypted (AES-256-GCM, the key id inside the
-- ciphertext, the user id bound as associated data); nothing in this schema ever holds a
-- token in clear.

CREATE TABLE im1_credentials (
    user_id                  text        NOT NULL,
    supplier                 text        NOT NULL,
    ods_code                 text        NOT NULL,
    -- NULL for Microtest, whose linkage keys from NHS login are dummies.
    token_ciphertext         bytea,
    -- A copy of the key id written in the ciphertext, so `keys status` and the start-up
    -- check of configured keys need not read every ciphertext.
    key_id                   text,

    -- What RP backends read (see the view below).
    status                   text        NOT NULL DEFAULT 'unchecked',
    reason                   text,
    refresh_required         boolean     NOT NULL DEFAULT false,
    refresh_attempts         integer     NOT NULL DEFAULT 0,
    refresh_suppressed_until timestamptz,
    last_checked_at          timestamptz,
    last_outcome             text,
    last_verified_at         timestamptz,
    invalidated_at           timestamptz,

    -- Two strikes: when the first unconfirmed invalid answer came, and its reason. Kept
    -- apart from last_outcome because a transient answer in between must not clear it.
    strike_at                timestamptz,
    strike_reason            text,
    -- Consecutive checks that reached no verdict (transient, skipped, ...): drives backoff.
    failures                 integer     NOT NULL DEFAULT 0,

    -- Scheduling. next_check_at is the only indexed scheduling column.
    next_check_at            timestamptz NOT NULL,
    -- Claims. Deliberately unindexed so that taking and extending a lease is a HOT update
    -- (fillfactor below leaves room on each page for it).
    lease_expires_at         timestamptz,
    lease_owner              uuid,
    -- Fencing token: bumped by every claim and every out-of-band change (a new token),
    -- and required to match by every write-back, so a verdict from a lost lease or about
    -- a replaced token is never written.
    fence                    bigint      NOT NULL DEFAULT 0,

    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,

    CONSTRAINT im1_credentials_pkey PRIMARY KEY (user_id),
    CONSTRAINT im1_credentials_user_id_check
        CHECK (char_length(user_id) BETWEEN 1 AND 128),
    CONSTRAINT im1_credentials_supplier_check
        CHECK (supplier IN ('emis', 'tpp', 'vision', 'microtest')),
    CONSTRAINT im1_credentials_ods_code_check
        CHECK (ods_code ~ '^[A-Z0-9]{3,10}$'),
    CONSTRAINT im1_credentials_status_check
        CHECK (status IN ('unchecked', 'valid', 'invalid', 'unsupported')),
    CONSTRAINT im1_credentials_reason_check
        CHECK (reason IN ('token_rejected', 'access_revoked', 'not_registered',
                          'access_restricted', 'refresh_exhausted')),
    -- A reason belongs to an invalid verdict and to nothing else.
    CONSTRAINT im1_credentials_reason_iff_invalid_check
        CHECK ((status = 'invalid') = (reason IS NOT NULL)),
    CONSTRAINT im1_credentials_last_outcome_check
        CHECK (last_outcome IN ('valid', 'suspect', 'invalid', 'transient', 'practice_unavailable',
                                'supplier_config_error', 'held', 'skipped')),
    CONSTRAINT im1_credentials_strike_reason_check
        CHECK (strike_reason IN ('token_rejected', 'access_revoked', 'not_registered',
                                 'access_restricted')),
    -- Microtest rows carry no token and are never checked; every other row has a token.
    CONSTRAINT im1_credentials_token_check
        CHECK ((supplier = 'microtest') = (token_ciphertext IS NULL)),
    CONSTRAINT im1_credentials_unsupported_check
        CHECK ((supplier = 'microtest') = (status = 'unsupported')),
    -- The loop guard: nobody is asked to refresh a token we cannot check.
    CONSTRAINT im1_credentials_refresh_check
        CHECK (NOT refresh_required OR status = 'invalid'),
    CONSTRAINT im1_credentials_refresh_attempts_check
        CHECK (refresh_attempts >= 0)
) WITH (fillfactor = 70);

COMMENT ON TABLE im1_credentials IS
    'One IM1 token per RP user, encrypted, with its verdict, schedule and claim. RP backends read im1_credential_status, not this table.';

-- The claim scans one supplier's due rows in due order. Microtest rows are never due.
CREATE INDEX im1_credentials_due_idx
    ON im1_credentials (supplier, next_check_at)
    WHERE status <> 'unsupported';

-- The status view: the contract RP backends read. Columns are named and typed as the
-- contract writes them; add columns at the end, never rename or drop one.
CREATE VIEW im1_credential_status AS
SELECT user_id,
       supplier,
       ods_code,
       status,
       reason,
       refresh_required,
       refresh_attempts,
       refresh_suppressed_until,
       last_checked_at,
       last_outcome,
       last_verified_at,
       invalidated_at,
       next_check_at,
       updated_at
  FROM im1_credentials;

COMMENT ON VIEW im1_credential_status IS
    'Per-user IM1 token standing for RP backends: ask NHS login for gp_integration_credentials when refresh_required.';

-- The audit trail: one row per change of a credential's standing, with the supplier's
-- evidence (HTTP status, code, message; never a token). Append-only.
CREATE TABLE im1_credential_events (
    id               bigint      GENERATED ALWAYS AS IDENTITY,
    user_id          text        NOT NULL,
    supplier         text        NOT NULL,
    ods_code         text        NOT NULL,
    at               timestamptz NOT NULL,
    -- What caused the event: 'check', 'import' (a new or replaced token), ...
    kind             text        NOT NULL,
    from_status      text,
    to_status        text        NOT NULL,
    outcome          text,
    reason           text,
    refresh_required boolean     NOT NULL,
    evidence         jsonb       NOT NULL DEFAULT '{}'::jsonb,

    CONSTRAINT im1_credential_events_pkey PRIMARY KEY (id),
    CONSTRAINT im1_credential_events_kind_check
        CHECK (kind IN ('check', 'import', 'refresh_outcome', 'guard', 'erasure', 'operator'))
);

COMMENT ON TABLE im1_credential_events IS
    'Append-only audit of every change in a credential''s standing, written in the same transaction as the change.';

CREATE INDEX im1_credential_events_user_idx ON im1_credential_events (user_id, at);
-- Retention pruning deletes by age.
CREATE INDEX im1_credential_events_at_idx ON im1_credential_events (at);

-- Events are never rewritten; only retention pruning deletes them.
CREATE FUNCTION im1_credential_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'im1_credential_events is append-only';
END;
$$;

CREATE TRIGGER im1_credential_events_no_update
    BEFORE UPDATE ON im1_credential_events
    FOR EACH ROW EXECUTE FUNCTION im1_credential_events_append_only();

-- Every sweep, from `run` or `sweep`, records itself, so every replica (and a `run` with
-- IM1_SCHEDULE=off) can report the last successful sweep of any process.
CREATE TABLE im1_sweeps (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    process_id   uuid        NOT NULL,
    trigger      text        NOT NULL,
    supplier     text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    succeeded    boolean,
    checks       bigint      NOT NULL DEFAULT 0,
    -- Counts per outcome, e.g. {"valid": 10, "transient": 2}.
    outcomes     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error        text,

    CONSTRAINT im1_sweeps_pkey PRIMARY KEY (id),
    CONSTRAINT im1_sweeps_trigger_check CHECK (trigger IN ('schedule', 'command', 'demo', 'bench'))
);

CREATE INDEX im1_sweeps_finished_idx ON im1_sweeps (finished_at) WHERE succeeded;
