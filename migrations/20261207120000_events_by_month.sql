-- The audit trail, partitioned by calendar month (UTC) of `at`, so that retention drops a
-- whole month (a catalogue change taking milliseconds) instead of deleting millions of rows
-- one batch at a time, and the table's dead space is bounded by a month. Existing rows are
-- kept, with their ids.
--
-- Monthly partitions are named im1_credential_events_yYYYYmMM. A DEFAULT partition takes any
-- row outside them (a clock far off, a month not created yet), so an insert never fails for
-- want of a partition; im1_events_ensure_months() creates the months ahead and moves such
-- rows into them. The service runs as im1_worker, which may not create or drop tables: both
-- maintenance functions are SECURITY DEFINER, owned by the owner, and EXECUTE is granted to
-- the worker by deploy/sql/roles.sql.

-- 1. The old table steps aside; its index-backed names are freed.
ALTER TABLE im1_credential_events RENAME TO im1_credential_events_unpartitioned;
ALTER INDEX im1_credential_events_pkey RENAME TO im1_credential_events_unpartitioned_pkey;
ALTER INDEX im1_credential_events_user_idx RENAME TO im1_credential_events_unpartitioned_user_idx;
ALTER INDEX im1_credential_events_at_idx RENAME TO im1_credential_events_unpartitioned_at_idx;
DROP TRIGGER im1_credential_events_no_update ON im1_credential_events_unpartitioned;

-- 2. The partitioned table: the same columns, defaults, identity, CHECK constraints (whatever
--    kinds earlier migrations allow) and comments. The primary key must hold the partition key.
CREATE TABLE im1_credential_events (
    LIKE im1_credential_events_unpartitioned
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING COMMENTS,
    CONSTRAINT im1_credential_events_pkey PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

COMMENT ON TABLE im1_credential_events IS
    'Append-only audit of every change in a credential''s standing, written in the same transaction as the change. Partitioned by month of at; retention drops whole months.';

CREATE INDEX im1_credential_events_user_idx ON im1_credential_events (user_id, at);
-- Retention deletes by age within the month it is in (and the default partition).
CREATE INDEX im1_credential_events_at_idx ON im1_credential_events (at);

CREATE TABLE im1_credential_events_default PARTITION OF im1_credential_events DEFAULT;

CREATE TRIGGER im1_credential_events_no_update
    BEFORE UPDATE ON im1_credential_events
    FOR EACH ROW EXECUTE FUNCTION im1_credential_events_append_only();

-- 3. Maintenance. Each takes its locks with a short lock_timeout, so that waiting behind a
--    long import never queues every other writer behind it: a month that cannot be locked
--    now is done at the next call (hourly in `run`, after each `sweep`).

-- Creates the monthly partition holding `at` if it does not exist, moving into it any rows of
-- that month the default partition took. True when it exists afterwards.
CREATE FUNCTION im1_events_ensure_month(at timestamptz) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    -- The schema the migration ran in; every name below is qualified with it, so nothing
    -- (a temporary table of the caller's, say) can stand in for these tables.
    s text := current_schema();
    lo timestamptz := date_trunc('month', at, 'UTC');
    hi timestamptz := date_trunc('month', at, 'UTC') + interval '1 month';
    part text := 'im1_credential_events_' || to_char(lo AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
BEGIN
    IF to_regclass(format('%I.%I', s, part)) IS NOT NULL THEN
        RETURN true;
    END IF;
    PERFORM set_config('lock_timeout', '2s', true);
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.im1_credential_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   s, part, s);
    EXECUTE format(
        'WITH moved AS (DELETE FROM %I.im1_credential_events_default WHERE at >= $1 AND at < $2 RETURNING *)
         INSERT INTO %I.%I SELECT * FROM moved', s, s, part) USING lo, hi;
    EXECUTE format('ALTER TABLE %I.im1_credential_events ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                   s, s, part, lo, hi);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END;
$$;

-- The partition of `from_time`'s month and of the next `ahead` months. Returns how many exist after.
CREATE FUNCTION im1_events_ensure_months(from_time timestamptz, ahead integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    made integer := 0;
BEGIN
    FOR i IN 0..greatest(ahead, 0) LOOP
        IF im1_events_ensure_month(from_time + make_interval(months => i)) THEN
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END;
$$;

-- Drops every monthly partition whose whole month is older than `before`; returns how many
-- rows they held. Rows older than `before` in the month it falls in, and in the default
-- partition, are left to the caller's batched DELETE (src/store/events.rs).
CREATE FUNCTION im1_events_drop_months_before(before timestamptz) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    s text := current_schema();
    part record;
    held bigint;
    dropped bigint := 0;
BEGIN
    FOR part IN
        SELECT c.relname,
               make_timestamptz(substr(c.relname, 24, 4)::int, substr(c.relname, 29, 2)::int, 1, 0, 0, 0, 'UTC')
                   + interval '1 month' AS ends
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = format('%I.im1_credential_events', s)::regclass
           AND c.relname ~ '^im1_credential_events_y[0-9]{4}m[0-9]{2}$'
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN part.ends > before;
        BEGIN
            PERFORM set_config('lock_timeout', '2s', true);
            EXECUTE format('SELECT count(*) FROM %I.%I', s, part.relname) INTO held;
            EXECUTE format('DROP TABLE %I.%I', s, part.relname);
            dropped := dropped + held;
        EXCEPTION WHEN lock_not_available THEN
            -- Busy (a long import holds the table): the next prune drops it.
            NULL;
        END;
    END LOOP;
    RETURN dropped;
END;
$$;

REVOKE ALL ON FUNCTION im1_events_ensure_month(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION im1_events_ensure_months(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION im1_events_drop_months_before(timestamptz) FROM PUBLIC;

-- 4. Every month the old rows span, this month and the next three; then the rows, ids kept,
--    and the identity continues after the highest id.
SELECT im1_events_ensure_month(m)
  FROM generate_series(
           date_trunc('month', least(coalesce((SELECT min(at) FROM im1_credential_events_unpartitioned), now()), now()), 'UTC'),
           now() + interval '3 months',
           interval '1 month') AS m;

INSERT INTO im1_credential_events OVERRIDING SYSTEM VALUE
SELECT * FROM im1_credential_events_unpartitioned;

SELECT setval(pg_get_serial_sequence('im1_credential_events', 'id'),
              greatest(coalesce((SELECT max(id) FROM im1_credential_events_unpartitioned), 0), 1),
              (SELECT max(id) FROM im1_credential_events_unpartitioned) IS NOT NULL);

DROP TABLE im1_credential_events_unpartitioned;

-- 5. Autovacuum for the tables every sweep rewrites. Each pass updates every due credential
--    (standing, schedule, lease, fence), so at PostgreSQL's default scale factor (20 %) a
--    10-million-row table would carry two million dead tuples before a vacuum starts. 2 %
--    bounds the dead space a vacuum has to find; the higher cost limit lets a vacuum of a
--    large table finish between sweeps instead of trailing them. (The table's fillfactor of 70
--    stays: it keeps lease updates HOT.)
ALTER TABLE im1_credentials SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);
-- The rolling-window counts are upserted once a second by every process and pruned: small,
-- hot, and best vacuumed often.
ALTER TABLE im1_supplier_counts SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 500);
