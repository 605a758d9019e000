-- crm-realtime: uninstall.
--
-- Removes what sql/install.sql (and crm_realtime.watch()) added, and nothing else:
--   * the triggers "crm_realtime_capture" / "_update" / "_delete" on every
--     table listed in crm_realtime.watched_table,
--   * the event triggers "crm_realtime_ddl" / "crm_realtime_drop" (a superuser's:
--     when install.sql ran as one, run this as one too),
--   * the schema "crm_realtime" with its journal, state, registry and functions
--     (including the sidecar's own tables kept there, e.g. Calendly connections),
--   * the rights of role "crm_realtime_definer" here (a superuser's install;
--     the role itself stays: it belongs to the cluster).
-- Host tables, their columns and their rows are not touched.
--
--   psql -v ON_ERROR_STOP=1 -d CRM -f sql/uninstall.sql
-- One transaction; running it on a database without crm-realtime is harmless.

BEGIN;

DO $$
DECLARE
    v_rel regclass;
BEGIN
    IF to_regclass('crm_realtime.watched_table') IS NOT NULL THEN
        FOR v_rel IN EXECUTE 'SELECT "relation" FROM "crm_realtime"."watched_table"' LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = v_rel) THEN
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture', v_rel);
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture_update', v_rel);
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture_delete', v_rel);
            END IF;
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger
                WHERE evtname IN ('crm_realtime_ddl', 'crm_realtime_drop')) THEN
        BEGIN
            DROP EVENT TRIGGER IF EXISTS "crm_realtime_ddl";
            DROP EVENT TRIGGER IF EXISTS "crm_realtime_drop";
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'crm_realtime: the event triggers crm_realtime_ddl and crm_realtime_drop belong to the superuser who ran install.sql: run uninstall.sql as a superuser';
        END;
    END IF;
END
$$;

DROP SCHEMA IF EXISTS "crm_realtime" CASCADE;

-- The role a superuser's install runs our functions as (see install.sql): its
-- rights in this database go (SELECT on the watched tables). The role itself
-- stays (NOLOGIN, and now without a right here): roles belong to the cluster,
-- another database may be installing with it at this very moment, and dropping
-- it under that install would fail it. Once no database uses it, a superuser
-- may DROP ROLE crm_realtime_definer.
DO $$
BEGIN
    IF pg_catalog.to_regrole('crm_realtime_definer') IS NOT NULL THEN
        BEGIN
            DROP OWNED BY "crm_realtime_definer";
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'crm_realtime: the rights of role crm_realtime_definer in this database stay (only a superuser may drop them)';
        END;
    END IF;
END
$$;

COMMIT;
