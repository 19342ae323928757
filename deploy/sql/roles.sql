-- im1-revalidator: least-privilege database roles.
--
-- Two roles besides the database owner:
--
--   im1_worker  the service itself: `run`, `sweep`, `credentials import`, `recheck`,
--               `status`, `guard`, `credentials canary`, `check-config` and `keys`
--               (re-encryption needs only the SELECT and UPDATE on im1_credentials
--               below). Reads and writes exactly the tables
--               those commands' SQL (src/store/) touches; owns nothing, cannot change the
--               schema, cannot rewrite the audit trail.
--   im1_reader  RP backends: SELECT on the status view `im1_credential_status`, nothing
--               else. Never the credentials table (its ciphertexts), never the events.
--
-- `migrate` (and `demo`, which makes its own database) runs as the database OWNER, never
-- as im1_worker: the worker has no CREATE on the schema, owns no table and cannot write
-- `_sqlx_migrations`, so it cannot apply a migration. The order on every deploy is:
--
--   DATABASE_URL=<owner's URL> im1-revalidator migrate
--   psql "<owner's URL>" -v ON_ERROR_STOP=1 -f deploy/sql/roles.sql
--   then start the service with DATABASE_URL=postgres://im1_worker@.../im1
--
-- Run this file again after every `migrate`: grants name tables one by one, so a table a
-- new migration adds is reachable by nobody until this file grants it (a test fails when
-- a table is missing here). Running it again is always safe: it is idempotent, it may be
-- run by two sessions at once (also from two databases of one cluster), and it first
-- revokes everything it manages, so each run leaves exactly the privileges written here.
--
-- Passwords are not in this file. The operator sets them out of band, e.g. in psql:
--   \password im1_worker
--   \password im1_reader
-- (or ALTER ROLE ... PASSWORD with a value from the secret store; never commit one).
--
-- Who may run it: the owner of the database and of the migrated tables. Creating the roles
-- needs CREATEROLE (roles belong to the whole cluster, not to one database); where the
-- owner lacks it, a DBA creates the two roles first (LOGIN, nothing more) and this file
-- finds them and only grants. Tables are named without a schema, exactly as the migrations
-- and the service name them, so they resolve through the same search_path (`public` by
-- default); the schema-level grants below use current_schema() for the same reason.

BEGIN;

-- ---------------------------------------------------------------------------------------
-- 1. The roles (cluster-wide).
--
-- Created only when absent. Two sessions may both see a role missing and both try to
-- create it: the loser waits for the winner's commit and then fails with duplicate_object
-- or, when the race is lost at the catalog's unique index, unique_violation; both are
-- caught, since the role now exists. An existing role is not altered (ALTER ROLE from two
-- sessions at once can fail with "tuple concurrently updated"); instead it is checked, and
-- a role carrying powers it must not have stops the whole file: fix it by hand.
-- ---------------------------------------------------------------------------------------
DO $roles$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'im1_worker') THEN
        BEGIN
            CREATE ROLE im1_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
            COMMENT ON ROLE im1_worker IS
                'im1-revalidator service (run, sweep, import, ...): DML on its own tables only; see deploy/sql/roles.sql';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created by a concurrent run of this file
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'im1_reader') THEN
        BEGIN
            CREATE ROLE im1_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
            COMMENT ON ROLE im1_reader IS
                'RP backends: SELECT on im1_credential_status only; see deploy/sql/roles.sql';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;

    -- Roles that already existed (made by a DBA, or by an older version of this file) must
    -- not carry powers that bypass every grant below.
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles
         WHERE rolname IN ('im1_worker', 'im1_reader')
           AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls)
    LOOP
        RAISE EXCEPTION 'role % has SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS; remove it (ALTER ROLE % NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS) and run this file again',
            r.rolname, r.rolname;
    END LOOP;
    -- Nor may they inherit the owner's privileges through membership (which would make
    -- them owners of every table, able to drop, alter and read anything).
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles
         WHERE rolname IN ('im1_worker', 'im1_reader')
           AND pg_catalog.pg_has_role(rolname, current_user, 'USAGE')
    LOOP
        RAISE EXCEPTION 'role % is a member of %, the owner running this file: revoke that membership and run this file again',
            r.rolname, current_user;
    END LOOP;
END
$roles$;

-- Two sessions granting on the same objects at once can fail with "tuple concurrently
-- updated"; this lock (per database, held to COMMIT) makes concurrent runs in one database
-- take turns. It comes after the roles so that a race to create them is still tolerated
-- (and tested) rather than merely avoided.
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('im1-revalidator deploy/sql/roles.sql'));

-- ---------------------------------------------------------------------------------------
-- 2. Database and schema.
-- ---------------------------------------------------------------------------------------
DO $db$
BEGIN
    -- CONNECT for both roles, granted explicitly so that they work where CONNECT was
    -- revoked from PUBLIC (a hardened cluster).
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO im1_worker, im1_reader', current_database());
    -- TEMPORARY: `credentials import` and the API's PUT (in `run`) track the user ids seen
    -- so far in a temporary table (`im1_import_seen`, ON COMMIT DROP). Only the worker
    -- needs it. PUBLIC has it by default; it is revoked so that the reader (and any other
    -- role without a grant) cannot create objects of any kind in this database.
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO im1_worker', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());

    -- USAGE on the schema holding the tables: needed to reach any object in it by name.
    -- CREATE is granted to nobody: the worker must not create tables (nor functions,
    -- views or types that could shadow ours). PostgreSQL 15 no longer gives PUBLIC CREATE
    -- on `public`, but a database created from an older template or upgraded with
    -- pg_upgrade keeps that grant: revoke it explicitly.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO im1_worker, im1_reader', current_schema());
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, im1_worker, im1_reader', current_schema());
END
$db$;

-- ---------------------------------------------------------------------------------------
-- 3. Start from nothing on every object this file manages, for the two roles and for
--    PUBLIC (a grant to PUBLIC would reach the reader too). TRUNCATE, REFERENCES and
--    TRIGGER are never granted below.
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON TABLE
    im1_credentials, im1_credential_status, im1_credential_events, im1_sweeps, im1_processes,
    im1_supplier_state, im1_supplier_counts, im1_held_verdicts, im1_canaries, _sqlx_migrations
    FROM PUBLIC, im1_worker, im1_reader;

-- ---------------------------------------------------------------------------------------
-- 4. im1_worker: per table, what src/store/ actually runs.
-- ---------------------------------------------------------------------------------------

-- The credentials (encrypted tokens, standing, schedule, claims).
--   SELECT  claims (claims.rs), dry-run peek, import's compare-before-replace and
--           key_ids_in_use (import.rs), status counts (status.rs), canary probes
--           (canaries.rs), guard release (guard.rs)
--   INSERT  import and the API's PUT (INSERT ... ON CONFLICT DO UPDATE, import.rs)
--   UPDATE  claim/lease/fence, write-back, extend/release leases (claims.rs), recheck
--           (status.rs), priority requests (priority.rs), refresh outcome (credentials.rs),
--           guard release's fence bump (guard.rs), and `keys rotate`'s re-encryption
--           when it is built
--   DELETE  erasure, DELETE /v1/credentials/{user} (credentials.rs); the canary mark and
--           held verdict go with it by ON DELETE CASCADE
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE im1_credentials TO im1_worker;

-- The status view: the API's GET and the responses of PUT and check (status.rs row()).
GRANT SELECT ON TABLE im1_credential_status TO im1_worker;

-- The audit trail is append-only: INSERT (write-back, import, refresh outcome, erasure,
-- guard discard), SELECT (the retention prune's subquery reads ids by age) and DELETE
-- for that prune only (events.rs). No UPDATE: rewriting an event is refused by privilege
-- here, and by the im1_credential_events_no_update trigger for anyone who has it.
-- The identity column needs no sequence grant: identity values are drawn without a
-- privilege check on the sequence.
GRANT SELECT, INSERT, DELETE ON TABLE im1_credential_events TO im1_worker;
-- The events table is partitioned by month; its partitions are granted to nobody (rows are
-- read, written and deleted through the partitioned table). Creating the coming months and
-- dropping the months past retention is DDL the worker may not run itself: two SECURITY
-- DEFINER functions owned by the owner do it (events.rs). The migration revoked them from
-- PUBLIC; im1_events_ensure_month is called only by im1_events_ensure_months.
REVOKE ALL ON FUNCTION im1_events_ensure_month(timestamptz) FROM PUBLIC, im1_worker, im1_reader;
REVOKE ALL ON FUNCTION im1_events_ensure_months(timestamptz, integer), im1_events_drop_months_before(timestamptz)
    FROM PUBLIC, im1_reader;
GRANT EXECUTE ON FUNCTION im1_events_ensure_months(timestamptz, integer), im1_events_drop_months_before(timestamptz)
    TO im1_worker;

-- Sweep records: INSERT ... RETURNING id at start, UPDATE at finish, SELECT for the last
-- successful sweep (sweeps.rs). Never deleted by the service.
GRANT SELECT, INSERT, UPDATE ON TABLE im1_sweeps TO im1_worker;

-- Live processes: heartbeat upsert (INSERT ... ON CONFLICT DO UPDATE), counted and listed
-- (SELECT), deleted on a clean exit and when dead past retention (safety.rs).
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE im1_processes TO im1_worker;

-- Breaker and guard per supplier: read by every sync, moved by conditional UPDATEs, the
-- guard cleared by release/discard (safety.rs, guard.rs). The three rows are seeded by
-- the migration; the service never inserts or deletes one.
GRANT SELECT, UPDATE ON TABLE im1_supplier_state TO im1_worker;

-- Rolling-window counts: upserted by each sync, summed, pruned (safety.rs).
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE im1_supplier_counts TO im1_worker;

-- Verdicts the guard holds: stored by the write-back (upsert), listed, applied or dropped
-- by `guard release|discard` (claims.rs, guard.rs).
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE im1_held_verdicts TO im1_worker;

-- Canary marks: `credentials canary add` (upsert), `remove`, `list`, and each probe's
-- result (canaries.rs).
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE im1_canaries TO im1_worker;

-- The migration ledger, read-only: `run` refuses to start and /readyz fails unless every
-- embedded migration is applied (store::ready). Without INSERT here, and without CREATE
-- on the schema, the worker cannot apply a migration.
GRANT SELECT ON TABLE _sqlx_migrations TO im1_worker;

-- ---------------------------------------------------------------------------------------
-- 5. im1_reader: the status view and nothing else.
--
-- The view is an ordinary (not security_invoker) view owned by the owner, so reading it
-- needs no privilege on im1_credentials, and it has no column for the ciphertext, the key
-- id, the claim or the fence. It is auto-updatable, but only SELECT is granted, so the
-- reader cannot write through it. LISTEN im1_credential_status needs no privilege.
-- ---------------------------------------------------------------------------------------
GRANT SELECT ON TABLE im1_credential_status TO im1_reader;

COMMIT;
