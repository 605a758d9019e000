-- crm-realtime: uninstall.
--
-- Removes what sql/install.sql (and crm_realtime.watch()) added, and nothing else:
--   * the triggers "crm_realtime_capture" / "crm_realtime_capture_update" on every
--     table listed in crm_realtime.watched_table,
--   * the schema "crm_realtime" with its journal, state, registry and functions
--     (including the sidecar's own tables kept there, e.g. Calendly connections).
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
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture', v_rel);
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture_update', v_rel);
        END LOOP;
    END IF;
END
$$;

DROP SCHEMA IF EXISTS "crm_realtime" CASCADE;

COMMIT;
