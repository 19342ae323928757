-- Verdict safety, shared by every replica through this database: live processes (for
-- rate-limit shares), each supplier's circuit breaker and mass-invalidation guard, the
-- rolling-window counts both read, verdicts the guard holds, and canary credentials.
--
-- Time in all of these comes from the service's injectable clock, never now(), so tests
-- cross a cool-off or a window without sleeping.

-- Every process that may call suppliers (run, sweep, demo) heartbeats its row about once
-- a second and deletes it on a clean exit. Each takes 1/n of every supplier's rate,
-- burst and in-flight cap, n being the processes whose heartbeat is recent.
CREATE TABLE im1_processes (
    process_id   uuid        NOT NULL,
    command      text        NOT NULL,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,

    CONSTRAINT im1_processes_pkey PRIMARY KEY (process_id)
);

COMMENT ON TABLE im1_processes IS
    'Live processes: each heartbeats its row; rate limits are shared by the processes whose heartbeat is recent.';

-- One row per checkable supplier: its breaker and guard.
CREATE TABLE im1_supplier_state (
    supplier            text        NOT NULL,

    -- closed: calls flow. open: no calls until breaker_open_until. half_open: a few probe
    -- checks decide whether it closes or opens again.
    breaker_state       text        NOT NULL DEFAULT 'closed',
    breaker_changed_at  timestamptz,
    breaker_open_until  timestamptz,
    -- Calls counted before this are not part of the breaker's window (set when it closes).
    breaker_window_from timestamptz,
    -- The counts that opened it, or the probe that decided: for status and the runbook.
    breaker_evidence    jsonb,

    -- Set while the guard holds new invalid verdicts; only an operator clears it.
    guard_held_since    timestamptz,
    -- Checks counted before this are not part of the guard's window (set when an operator
    -- releases or discards, so the guard does not trip again on the same answers).
    guard_window_from   timestamptz,
    guard_evidence      jsonb,

    updated_at          timestamptz,

    CONSTRAINT im1_supplier_state_pkey PRIMARY KEY (supplier),
    CONSTRAINT im1_supplier_state_supplier_check CHECK (supplier IN ('emis', 'tpp', 'vision')),
    CONSTRAINT im1_supplier_state_breaker_check CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    CONSTRAINT im1_supplier_state_open_until_check
        CHECK (breaker_state <> 'open' OR breaker_open_until IS NOT NULL)
);

INSERT INTO im1_supplier_state (supplier) VALUES ('emis'), ('tpp'), ('vision');

COMMENT ON TABLE im1_supplier_state IS
    'Per-supplier circuit breaker and mass-invalidation guard, the same for every replica.';

-- Rolling-window counts in short buckets of the clock. Each process adds what it saw
-- since its last flush (about once a second, never per check); windows are sums over the
-- recent buckets. Pruned with the events.
CREATE TABLE im1_supplier_counts (
    supplier  text        NOT NULL,
    bucket    timestamptz NOT NULL,
    -- Supplier calls (every attempt, retries included) and those that were transient.
    calls     bigint      NOT NULL DEFAULT 0,
    transient bigint      NOT NULL DEFAULT 0,
    -- Checks answered with a verdict on the token (valid or invalid), and the invalid ones
    -- (first strikes, confirmations and held answers alike).
    answers   bigint      NOT NULL DEFAULT 0,
    invalid   bigint      NOT NULL DEFAULT 0,

    CONSTRAINT im1_supplier_counts_pkey PRIMARY KEY (supplier, bucket)
);

COMMENT ON TABLE im1_supplier_counts IS
    'Calls, transient answers, token answers and invalid answers per supplier per time bucket, summed over all processes.';

-- Invalid answers the guard held instead of applying. `guard release` applies those whose
-- credential has seen nothing since (last_outcome still held); `guard discard` drops them.
CREATE TABLE im1_held_verdicts (
    user_id  text        NOT NULL,
    supplier text        NOT NULL,
    ods_code text        NOT NULL,
    reason   text        NOT NULL,
    evidence jsonb       NOT NULL DEFAULT '{}'::jsonb,
    held_at  timestamptz NOT NULL,

    CONSTRAINT im1_held_verdicts_pkey PRIMARY KEY (user_id),
    CONSTRAINT im1_held_verdicts_user_fkey FOREIGN KEY (user_id)
        REFERENCES im1_credentials (user_id) ON DELETE CASCADE,
    CONSTRAINT im1_held_verdicts_reason_check
        CHECK (reason IN ('token_rejected', 'access_revoked', 'not_registered', 'access_restricted'))
);

CREATE INDEX im1_held_verdicts_supplier_idx ON im1_held_verdicts (supplier, ods_code);

COMMENT ON TABLE im1_held_verdicts IS
    'Invalid verdicts held by the mass-invalidation guard, awaiting an operator''s release or discard.';

-- Canary credentials: known-good tokens checked first in every sweep; if one fails, its
-- supplier gives no verdicts in that sweep. Probes only: their results are kept here and
-- never change the credential's own standing.
CREATE TABLE im1_canaries (
    user_id         text        NOT NULL,
    added_at        timestamptz NOT NULL,
    note            text,
    last_probed_at  timestamptz,
    -- What the last probe came to: valid, invalid, transient, practice_unavailable, ...
    last_outcome    text,
    last_evidence   jsonb,

    CONSTRAINT im1_canaries_pkey PRIMARY KEY (user_id),
    CONSTRAINT im1_canaries_user_fkey FOREIGN KEY (user_id)
        REFERENCES im1_credentials (user_id) ON DELETE CASCADE,
    CONSTRAINT im1_canaries_note_check CHECK (char_length(note) <= 500)
);

COMMENT ON TABLE im1_canaries IS
    'Known-good credentials probed first in every sweep; a failing canary stops its supplier''s verdicts for that sweep.';
