-- crm-realtime: install (or upgrade) the change capture in a CRM database.
--
-- Creates, all inside the schema "crm_realtime":
--   * table  journal           one row per published change (what the sidecar reads)
--   * table  journal_state     prune watermark (recovery must know what was pruned)
--   * table  watched_table     which host tables are watched and how their columns map
--   * function watch(...)      start watching a host table (generates its trigger)
--   * function unwatch(...)    stop watching a host table
--   * function prune(...)      delete journal rows older than a retention window
--   * tables calendly_connection, calendly_booking, calendly_event_seen (Calendly connections, processed bookings, poll state)
--   * for public.prospects and public.notifications, when they exist, the
--     AFTER row triggers "crm_realtime_capture" and their trigger functions.
-- Touches nothing else: no host table, column or row is altered.
-- Undo with sql/uninstall.sql.
--
-- Run as the owner of the host tables (or a superuser):
--   psql -v ON_ERROR_STOP=1 -d CRM -f sql/install.sql
-- One transaction; running it again is harmless (it upgrades functions in place).
-- Needs PostgreSQL 13 or later (xid8, pg_current_xact_id, pg_visible_in_snapshot).

BEGIN;

CREATE SCHEMA IF NOT EXISTS "crm_realtime";
COMMENT ON SCHEMA "crm_realtime" IS 'crm-realtime change capture; remove with sql/uninstall.sql';

-- The journal. The sidecar reads it by transaction snapshot, not by id: ids are
-- taken inside the writing transaction, so id order is not commit order. "txid"
-- lets a reader ask "which rows were not yet visible in the snapshot I last read
-- with", which is exact whatever order concurrent transactions commit in.
-- The primary key leads with txid because that is the column every read ranges on.
CREATE TABLE IF NOT EXISTS "crm_realtime"."journal" (
    "id"              bigint GENERATED ALWAYS AS IDENTITY,
    "txid"            xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    "recorded_at"     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    "kind"            text NOT NULL CHECK ("kind" IN ('prospect', 'notification')),
    "op"              text NOT NULL CHECK ("op" IN ('created', 'updated', 'deleted')),
    "organization_id" text NOT NULL,
    "user_id"         text,
    "data"            jsonb NOT NULL,
    PRIMARY KEY ("txid", "id")
);
CREATE INDEX IF NOT EXISTS "journal_recorded_at_brin"
    ON "crm_realtime"."journal" USING brin ("recorded_at");
COMMENT ON TABLE "crm_realtime"."journal" IS
    'One row per published change of a watched table; pruned by crm_realtime.prune()';

-- A large row (100 KB of notes) is copied into "data" inside the CRM's write;
-- lz4 compresses it several times faster than the default pglz (measured: the
-- trigger's cost for a 100 KB insert falls from ~2.2 ms to ~0.6 ms). Servers
-- before PostgreSQL 14 or built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE "crm_realtime"."journal" ALTER COLUMN "data" SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
    RAISE NOTICE 'crm_realtime: lz4 is not available here; the journal keeps the default compression';
END
$$;

CREATE TABLE IF NOT EXISTS "crm_realtime"."journal_state" (
    "singleton"    boolean PRIMARY KEY DEFAULT true CHECK ("singleton"),
    -- every journal row with txid below this may have been deleted by prune()
    "pruned_below" xid8 NOT NULL DEFAULT '0'
);
INSERT INTO "crm_realtime"."journal_state" ("singleton") VALUES (true)
    ON CONFLICT ("singleton") DO NOTHING;

CREATE TABLE IF NOT EXISTS "crm_realtime"."watched_table" (
    "relation"       regclass PRIMARY KEY,
    "kind"           text NOT NULL CHECK ("kind" IN ('prospect', 'notification')),
    "pk_column"      name NOT NULL,
    "org_column"     name NOT NULL,
    "user_column"    name,
    -- event field -> host column (JSON null: the field is always null)
    "fields"         jsonb NOT NULL,
    "function_name"  name NOT NULL
);

-- The event fields of each kind, in contract order (the sidecar's
-- sidecar/events.py holds the same lists; tests keep them equal).
CREATE OR REPLACE FUNCTION "crm_realtime"."event_fields"(p_kind text)
RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_kind
        WHEN 'prospect' THEN ARRAY['id', 'firstname', 'lastname', 'email', 'phone',
                                   'status', 'source', 'notes', 'created_at', 'updated_at']
        WHEN 'notification' THEN ARRAY['id', 'type', 'title', 'message', 'meta', 'created_at']
    END
$$;

CREATE OR REPLACE FUNCTION "crm_realtime"."unwatch"(p_table regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w "crm_realtime"."watched_table"%ROWTYPE;
BEGIN
    SELECT * INTO w FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'crm_realtime_capture_update', p_table);
    IF w."relation" IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I()', w."function_name");
        DELETE FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    END IF;
END
$$;

-- watch(): capture a host table's changes into the journal.
--
--   p_table        the host table, e.g. 'public.crm_lead'
--   p_kind         'prospect' or 'notification'
--   p_org_column   column holding the organization (compared as text)
--   p_pk_column    primary key column, published as the event's "id"
--   p_fields       {"event field": "host column" | null, ...}; fields left out map
--                  to the column of the same name, which must then exist
--   p_user_column  notifications only: column addressing one user (NULL = whole org)
--
-- It generates one trigger function per table with the column names written in,
-- so the per-row cost is a few field reads and one INSERT; no dynamic SQL runs
-- at write time. Identifiers are validated against the catalog and quoted with
-- format('%I'). Prospects get INSERT/UPDATE/DELETE triggers and the UPDATE one
-- has a WHEN clause, so an UPDATE touching no published column never enters
-- PL/pgSQL at all. Notifications get an INSERT trigger only: the contract has no
-- event for a changed or deleted notification (marking one seen must cost nothing).
CREATE OR REPLACE FUNCTION "crm_realtime"."watch"(
    p_table regclass,
    p_kind text,
    p_org_column name,
    p_pk_column name DEFAULT 'id',
    p_fields jsonb DEFAULT '{}',
    p_user_column name DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_fields   text[] := "crm_realtime"."event_fields"(p_kind);
    v_map      jsonb := '{}';
    v_field    text;
    v_col      text;
    v_unknown  text;
    v_fn       name;
    v_new_obj  text := '';
    v_changed  text := '';
    v_cols     text[] := '{}';
    v_body     text;
BEGIN
    IF v_fields IS NULL THEN
        RAISE EXCEPTION 'crm_realtime.watch: kind % is not one of prospect, notification', p_kind;
    END IF;
    IF p_user_column IS NOT NULL AND p_kind <> 'notification' THEN
        RAISE EXCEPTION 'crm_realtime.watch: a user column only makes sense for notifications';
    END IF;
    SELECT k INTO v_unknown FROM jsonb_object_keys(coalesce(p_fields, '{}')) AS k
        WHERE k <> ALL (v_fields) OR k = 'id' LIMIT 1;
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'crm_realtime.watch: % is not a mappable % field (mappable: %)',
            v_unknown, p_kind, array_to_string(v_fields[2:], ', ');
    END IF;

    FOREACH v_col IN ARRAY ARRAY[p_org_column::text, p_pk_column::text, p_user_column::text] LOOP
        IF v_col IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute
            WHERE attrelid = p_table AND attname = v_col AND attnum > 0 AND NOT attisdropped
        ) THEN
            RAISE EXCEPTION 'crm_realtime.watch: table % has no column %', p_table, v_col;
        END IF;
    END LOOP;

    -- Build the mapping and the generated fragments.
    FOREACH v_field IN ARRAY v_fields LOOP
        IF v_field = 'id' THEN
            v_col := p_pk_column;
        ELSIF p_fields ? v_field THEN
            v_col := p_fields ->> v_field;   -- NULL when mapped to JSON null
        ELSE
            v_col := v_field;
        END IF;
        IF v_col IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute
            WHERE attrelid = p_table AND attname = v_col AND attnum > 0 AND NOT attisdropped
        ) THEN
            RAISE EXCEPTION 'crm_realtime.watch: table % has no column % for field % (map it with p_fields, or to null)',
                p_table, v_col, v_field;
        END IF;
        v_map := v_map || jsonb_build_object(v_field, v_col);
        -- A timestamp without time zone is taken as UTC (Odoo's convention), so
        -- events always carry an offset as the contract says.
        v_new_obj := v_new_obj || CASE WHEN v_new_obj = '' THEN '' ELSE ', ' END
            || format('%L, %s', v_field, CASE
                WHEN v_col IS NULL THEN 'NULL'
                WHEN (SELECT atttypid FROM pg_catalog.pg_attribute
                       WHERE attrelid = p_table AND attname = v_col) = 'timestamp'::regtype
                    THEN format('(NEW.%I AT TIME ZONE ''UTC'')', v_col)
                ELSE format('NEW.%I', v_col) END);
        IF v_col IS NOT NULL AND NOT v_col = ANY (v_cols) THEN
            v_cols := v_cols || v_col;
        END IF;
    END LOOP;
    IF NOT p_org_column::text = ANY (v_cols) THEN v_cols := v_cols || p_org_column::text; END IF;
    IF p_user_column IS NOT NULL AND NOT p_user_column::text = ANY (v_cols) THEN
        v_cols := v_cols || p_user_column::text;
    END IF;
    SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
        INTO v_changed FROM unnest(v_cols) AS c;

    v_fn := left('capture_' || replace(p_table::text, '"', ''), 63);

    IF p_kind = 'prospect' THEN
        v_body := format($f$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.%1$I IS NOT NULL THEN
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'created', NEW.%1$I::text, pg_catalog.jsonb_build_object(%3$s));
        END IF;
    ELSIF TG_OP = 'UPDATE' AND NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I
                           AND NEW.%2$I IS NOT DISTINCT FROM OLD.%2$I THEN
        IF NEW.%1$I IS NOT NULL THEN
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'updated', NEW.%1$I::text, pg_catalog.jsonb_build_object(%3$s));
        END IF;
    ELSE
        -- DELETE, or an UPDATE that moved the row to another organization (or
        -- changed its key): gone for the old organization, new for the new one.
        IF OLD.%1$I IS NOT NULL THEN
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'deleted', OLD.%1$I::text, pg_catalog.jsonb_build_object('id', OLD.%2$I));
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.%1$I IS NOT NULL THEN
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'created', NEW.%1$I::text, pg_catalog.jsonb_build_object(%3$s));
        END IF;
    END IF;
    -- Constant payload: PostgreSQL folds identical notifications of one
    -- transaction into one, and the payload can never reach the 8000-byte limit.
    PERFORM pg_catalog.pg_notify('crm_realtime', '');
    RETURN NULL;
END
$f$, p_org_column, p_pk_column, v_new_obj);
    ELSE
        v_body := format($f$
BEGIN
    IF NEW.%1$I IS NOT NULL THEN
        INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "user_id", "data")
        VALUES ('notification', 'created', NEW.%1$I::text, %2$s, pg_catalog.jsonb_build_object(%3$s));
        PERFORM pg_catalog.pg_notify('crm_realtime', '');
    END IF;
    RETURN NULL;
END
$f$, p_org_column,
     CASE WHEN p_user_column IS NULL THEN 'NULL' ELSE format('NEW.%I::text', p_user_column) END,
     v_new_obj);
    END IF;

    PERFORM "crm_realtime"."unwatch"(p_table);

    -- SECURITY DEFINER: the CRM's roles need no right on our schema, and no
    -- role but the installer's can write journal rows (forged events).
    -- The fixed search_path keeps a caller's search_path out of the definer's rights.
    EXECUTE format(
        'CREATE FUNCTION "crm_realtime".%I() RETURNS trigger LANGUAGE plpgsql '
        'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L', v_fn, v_body);
    EXECUTE format('REVOKE ALL ON FUNCTION "crm_realtime".%I() FROM PUBLIC', v_fn);

    IF p_kind = 'prospect' THEN
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION "crm_realtime".%I()',
            'crm_realtime_capture', p_table, v_fn);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION "crm_realtime".%I()',
            'crm_realtime_capture_update', p_table, v_changed, v_fn);
    ELSE
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION "crm_realtime".%I()',
            'crm_realtime_capture', p_table, v_fn);
    END IF;

    INSERT INTO "crm_realtime"."watched_table"
        ("relation", "kind", "pk_column", "org_column", "user_column", "fields", "function_name")
    VALUES (p_table, p_kind, p_pk_column, p_org_column, p_user_column, v_map, v_fn);
END
$$;

-- prune(): delete journal rows recorded before now() - p_keep; returns the count.
-- Rows go by transaction id below a cutoff that no kept row is under, and the
-- cutoff is recorded in journal_state so a recovering reader can tell "nothing
-- happened" from "it was pruned". A transaction still running with an id below
-- the cutoff loses nothing: its rows are invisible to this DELETE, the live
-- stream still delivers them, and recovery treats positions before the cutoff
-- as too old, which is the safe answer.
CREATE OR REPLACE FUNCTION "crm_realtime"."prune"(p_keep interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cutoff xid8;
    v_count  bigint;
BEGIN
    SELECT min("txid") INTO v_cutoff FROM "crm_realtime"."journal"
     WHERE "recorded_at" >= now() - p_keep;
    IF v_cutoff IS NULL THEN
        -- nothing to keep: cut just above the newest row
        SELECT (max("txid")::text::numeric + 1)::text::xid8 INTO v_cutoff
          FROM "crm_realtime"."journal";
    END IF;
    IF v_cutoff IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM "crm_realtime"."journal" WHERE "txid" < v_cutoff;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE "crm_realtime"."journal_state"
       SET "pruned_below" = greatest("pruned_below", v_cutoff);
    RETURN v_count;
END
$$;

-- ---- Calendly (sidecar-owned tables) ----
-- Written by the sidecar only (sidecar/calendly); the CRM's tables are written
-- through the watched_table mapping, never altered.

-- One Calendly account linked to one CRM organization. Tokens and signing keys
-- are Fernet ciphertext (key from SIDECAR_CALENDLY_ENCRYPTION_KEY), never plain.
CREATE TABLE IF NOT EXISTS "crm_realtime"."calendly_connection" (
    "id"                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "organization_id"        text NOT NULL,          -- CRM organization (compared as text)
    "scope"                  text NOT NULL CHECK ("scope" IN ('organization', 'user')),
    -- what is polled: the Calendly organization URI (scope organization) or user URI
    "subject"                text NOT NULL,
    "calendly_organization"  text NOT NULL,
    "calendly_user"          text NOT NULL,          -- owner of the token
    "token_ciphertext"       text NOT NULL,
    "signing_key_ciphertext" text,                   -- NULL: webhooks cannot be verified
    "webhook_subscription"   text,                   -- URI of the subscription we created
    "status"                 text NOT NULL DEFAULT 'active'
                             CHECK ("status" IN ('active', 'needs_reauth')),
    "watermark"              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    "last_poll_at"           timestamptz,
    "last_error"             text,                   -- log text of the last failed poll
    "created_at"             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    "updated_at"             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE ("organization_id", "subject")
);

-- Idempotency: one row per (kind, invitee URI) already applied to a CRM
-- organization, inserted in the same transaction as the CRM writes.
CREATE TABLE IF NOT EXISTS "crm_realtime"."calendly_booking" (
    "organization_id" text NOT NULL,
    "kind"            text NOT NULL CHECK ("kind" IN ('invitee.created', 'invitee.canceled')),
    "invitee_uri"     text NOT NULL,
    "event_uri"       text NOT NULL,
    "connection_id"   uuid,
    "prospect_id"     text,
    "outcome"         text NOT NULL,
    "via"             text NOT NULL CHECK ("via" IN ('webhook', 'poll')),
    "processed_at"    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY ("organization_id", "kind", "invitee_uri")
);

-- What each poll last saw of a scheduled event, so an unchanged event does not
-- cost an invitee request on every poll.
CREATE TABLE IF NOT EXISTS "crm_realtime"."calendly_event_seen" (
    "connection_id" uuid NOT NULL REFERENCES "crm_realtime"."calendly_connection" ON DELETE CASCADE,
    "event_uri"     text NOT NULL,
    "fingerprint"   text NOT NULL,
    "start_time"    timestamptz NOT NULL,
    PRIMARY KEY ("connection_id", "event_uri")
);

-- Re-generate the trigger functions of tables already watched (so re-running
-- this file upgrades them), then watch the conventional tables when this
-- database has them and nobody has watched them yet. Other CRMs call
-- crm_realtime.watch() themselves: see sql/README.md.
DO $$
DECLARE
    w "crm_realtime"."watched_table"%ROWTYPE;
BEGIN
    FOR w IN SELECT * FROM "crm_realtime"."watched_table" LOOP
        PERFORM "crm_realtime"."watch"(w."relation", w."kind", w."org_column", w."pk_column",
                                       w."fields" - 'id', w."user_column");
    END LOOP;
    IF to_regclass('public.prospects') IS NULL THEN
        RAISE NOTICE 'crm_realtime: no table public.prospects; call crm_realtime.watch() for yours';
    ELSIF NOT EXISTS (SELECT 1 FROM "crm_realtime"."watched_table"
                      WHERE "relation" = 'public.prospects'::regclass) THEN
        PERFORM "crm_realtime"."watch"('public.prospects', 'prospect', 'organization_id');
    END IF;
    IF to_regclass('public.notifications') IS NULL THEN
        RAISE NOTICE 'crm_realtime: no table public.notifications; call crm_realtime.watch() for yours';
    ELSIF NOT EXISTS (SELECT 1 FROM "crm_realtime"."watched_table"
                      WHERE "relation" = 'public.notifications'::regclass) THEN
        PERFORM "crm_realtime"."watch"('public.notifications', 'notification', 'organization_id',
                                       p_user_column => 'user_id');
    END IF;
END
$$;

COMMIT;
