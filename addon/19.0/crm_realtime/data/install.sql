-- crm-realtime: install (or upgrade) the change capture in a CRM database.
--
-- Creates, all inside the schema "crm_realtime":
--   * table  journal           one row per published change (what the sidecar reads)
--   * table  journal_state     prune watermark (recovery must know what was pruned)
--   * table  watched_table     which host tables are watched and how their columns map
--   * function watch(...)      start watching a host table (generates its trigger)
--   * function unwatch(...)    stop watching a host table
--   * function repair(...)     after a CRM migration: follow renamed columns, report the rest
--   * view mapping_status      the state of every mapped column (what the sidecar reports)
--   * function prune(...)      delete journal rows older than a retention window
--   * tables calendly_connection, calendly_booking, calendly_event_seen (Calendly connections, processed bookings, poll state)
--   * for public.prospects and public.notifications, when they exist, the
--     triggers "crm_realtime_capture" (AFTER INSERT, per statement),
--     "crm_realtime_capture_update" / "_delete" (prospects, per row) and their
--     trigger functions.
-- Outside the schema, and only when run by a superuser: the event triggers
-- "crm_realtime_ddl" (after ALTER TABLE: re-validate the mapping) and
-- "crm_realtime_drop" (after DROP TABLE: forget the table).
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

-- The role our SECURITY DEFINER capture and expansion functions run as when a
-- superuser installs: they turn the CRM's column values into JSON or text,
-- which calls any cast the owner of a column's type defined (CREATE CAST ...
-- WITH FUNCTION). As the installer, such a cast would run with a superuser's
-- rights; as this role it can only write journal rows and read the watched
-- tables. NOLOGIN, no other right; shared by the databases of the cluster (a
-- role is per cluster); uninstall.sql takes its rights in a database away and
-- leaves the role.
-- A non-superuser install keeps its functions as its own: they then run with
-- the rights of the table owner who installed, which no cast can raise.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'crm_realtime_definer') THEN
        BEGIN
            CREATE ROLE "crm_realtime_definer" NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;    -- another database's install created it meanwhile
        END;
    END IF;
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        GRANT USAGE ON SCHEMA "crm_realtime" TO "crm_realtime_definer";
    END IF;
END
$$;

-- The journal. The sidecar reads it by transaction snapshot, not by id: ids are
-- taken inside the writing transaction, so id order is not commit order. "txid"
-- lets a reader ask "which rows were not yet visible in the snapshot I last read
-- with", which is exact whatever order concurrent transactions commit in.
-- The primary key leads with txid because that is the column every read ranges on.
CREATE TABLE IF NOT EXISTS "crm_realtime"."journal" (
    "id"              bigint GENERATED ALWAYS AS IDENTITY,
    "txid"            xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    "recorded_at"     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    "kind"            text NOT NULL,
    "op"              text NOT NULL,
    "organization_id" text NOT NULL,
    "user_id"         text,
    "data"            jsonb NOT NULL,
    PRIMARY KEY ("txid", "id")
);
-- "kind" is 'prospect' or 'notification', "op" 'created', 'updated' or 'deleted'.
-- No CHECK constraint says so: only the generated trigger functions write here,
-- and PostgreSQL re-reads and re-plans a CHECK's expression for every INSERT
-- statement a trigger runs (measured: 5.7% of all backend CPU at 16 writers).
-- Installs before this version had them: drop them (only then, so re-running
-- this file does not lock the journal against the CRM's writes).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                WHERE conrelid = '"crm_realtime"."journal"'::regclass AND contype = 'c'
                  AND conname IN ('journal_kind_check', 'journal_op_check')) THEN
        ALTER TABLE "crm_realtime"."journal" DROP CONSTRAINT IF EXISTS "journal_kind_check",
            DROP CONSTRAINT IF EXISTS "journal_op_check";
    END IF;
END
$$;
COMMENT ON TABLE "crm_realtime"."journal" IS
    'One row per published change of a watched table; pruned by crm_realtime.prune()';
DO $$
BEGIN
    IF pg_catalog.to_regrole('crm_realtime_definer') IS NOT NULL
       AND (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        -- the columns a trigger writes; never txid, id or recorded_at
        GRANT INSERT ("kind", "op", "organization_id", "user_id", "data")
            ON "crm_realtime"."journal" TO "crm_realtime_definer";
        -- lean capture: an UPDATE finds its own transaction's last row
        GRANT SELECT ("txid", "id", "op", "organization_id", "data") ON "crm_realtime"."journal"
            TO "crm_realtime_definer";
    END IF;
END
$$;

-- A large row (100 KB of notes) is copied into "data" inside the CRM's write;
-- lz4 compresses it several times faster than the default pglz (measured: the
-- trigger's cost for a 100 KB insert falls from ~2.2 ms to ~0.6 ms). Servers
-- before PostgreSQL 14 or built without lz4 keep pglz.
-- Only when it is not set yet: ALTER TABLE locks the journal, and so, while it
-- waits for a CRM transaction in flight, every CRM write behind it.
DO $$
DECLARE
    v_compression text;
BEGIN
    BEGIN
        EXECUTE 'SELECT attcompression::text FROM pg_catalog.pg_attribute '
                'WHERE attrelid = ''"crm_realtime"."journal"''::regclass AND attname = ''data'''
           INTO v_compression;
    EXCEPTION WHEN undefined_column THEN    -- before PostgreSQL 14
        v_compression := NULL;
    END;
    IF v_compression IS DISTINCT FROM 'l' THEN
        ALTER TABLE "crm_realtime"."journal" ALTER COLUMN "data" SET COMPRESSION lz4;
    END IF;
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
-- What the generated trigger function was written for, per event field (and
-- "@org", "@user"): {"column": name, "attnum": n, "type": "regtype text"}.
-- The attribute number is how a renamed column is recognised (PostgreSQL never
-- reuses one); the type, how a stale function is told from a current one.
ALTER TABLE "crm_realtime"."watched_table"
    ADD COLUMN IF NOT EXISTS "columns" jsonb NOT NULL DEFAULT '{}';
-- Lean capture (prospects only, off unless crm_realtime.lean() turned it on):
-- INSERT and UPDATE journal a row's key only, and the sidecar reads the payload
-- from the row when it reads the journal (see sql/README.md).
ALTER TABLE "crm_realtime"."watched_table"
    ADD COLUMN IF NOT EXISTS "lean" boolean NOT NULL DEFAULT false;

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
    v_trigger name;
BEGIN
    SELECT * INTO w FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    FOR v_trigger IN SELECT tgname FROM pg_catalog.pg_trigger
                      WHERE tgrelid = p_table AND NOT tgisinternal
                        AND tgname IN ('crm_realtime_capture', 'crm_realtime_capture_update',
                                       'crm_realtime_capture_delete') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, p_table);
    END LOOP;
    IF w."relation" IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I()', w."function_name");
        EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I(text, text[])',
                       "crm_realtime"."_expand_name"(w."function_name"));
        DELETE FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    END IF;
END
$$;

-- The payload expression the generated functions publish: one jsonb_build_object
-- argument pair per event field, over p_src. With p_direct, p_src is a record
-- (NEW, or the INSERT statement's row t) and each column is read from it by
-- name: cheap, and only ever evaluated where a failure is caught (a block that
-- only reads, or after a query naming the same columns has prepared), with the
-- JSON path as the fallback, so a column renamed, dropped or retyped since this
-- was generated costs a fallback, never a failed write. Without it, p_src is a
-- variable holding the row as JSON (to_jsonb) and each column is taken by name
-- from it: a column that is gone is simply absent (null), so that path cannot
-- fail at all. A mapped column missing when this is generated is named all the
-- same: the direct read fails and the JSON path publishes null until the column
-- is back. No trigger definition names a column, so PostgreSQL never refuses
-- an ALTER TABLE because of us.
CREATE OR REPLACE FUNCTION "crm_realtime"."_payload_expr"(p_table regclass, p_fields jsonb,
                                                           p_kind text, p_src text, p_direct boolean)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_field text;
    v_col   text;
    v_value text;
    v_out   text := '';
BEGIN
    FOREACH v_field IN ARRAY "crm_realtime"."event_fields"(p_kind) LOOP
        v_col := p_fields ->> v_field;
        IF v_col IS NULL THEN
            v_value := 'NULL';
        ELSIF (SELECT atttypid FROM pg_catalog.pg_attribute
                WHERE attrelid = p_table AND attname = v_col AND attnum > 0
                  AND NOT attisdropped) = 'timestamp'::regtype THEN
            -- A timestamp without time zone is taken as UTC (Odoo's convention), so
            -- events always carry an offset as the contract says: the value's JSON
            -- text, then the offset. Text concatenation cannot fail whatever the
            -- column holds by the time this runs.
            v_value := format('pg_catalog.to_jsonb((%s || ''+00:00'')::text)',
                CASE WHEN p_direct
                     THEN format('(pg_catalog.to_jsonb(%s.%I) OPERATOR(pg_catalog.#>>) ''{}'')', p_src, v_col)
                     ELSE format('(%s->>%L)', p_src, v_col) END);
        ELSIF p_direct THEN
            v_value := format('%s.%I', p_src, v_col);
        ELSE
            v_value := format('%s->%L', p_src, v_col);
        END IF;
        v_out := v_out || CASE WHEN v_out = '' THEN '' ELSE ', ' END || format('%L, ', v_field) || v_value;
    END LOOP;
    RETURN 'pg_catalog.jsonb_build_object(' || v_out || ')';
END
$$;
-- the two it replaces (versions of this session before it)
DROP FUNCTION IF EXISTS "crm_realtime"."_payload_sql"(regclass, jsonb, text, text);
DROP FUNCTION IF EXISTS "crm_realtime"."_payload_direct_sql"(regclass, jsonb, text, text);

-- True when no published field differs between the JSON rows n and o (of a
-- prospect): one comparison per mapped column's JSON value, stopping at the
-- first that differs. Cheaper than building both payloads and comparing them,
-- and the same answer, since each field is a function of that value alone.
CREATE OR REPLACE FUNCTION "crm_realtime"."_unchanged_sql"(p_fields jsonb, p_kind text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_field text;
    v_col   text;
    v_out   text := '';
BEGIN
    FOREACH v_field IN ARRAY "crm_realtime"."event_fields"(p_kind) LOOP
        v_col := p_fields ->> v_field;
        -- "id" is the key, which the caller has compared already
        CONTINUE WHEN v_col IS NULL OR v_field = 'id';
        v_out := v_out || CASE WHEN v_out = '' THEN '' ELSE ' AND ' END
            || format('n->%1$L IS NOT DISTINCT FROM o->%1$L', v_col);
    END LOOP;
    RETURN CASE WHEN v_out = '' THEN 'true' ELSE v_out END;
END
$$;

-- The organization of a record, as text, read directly: the text the JSON
-- path gives (to_jsonb(row)->>org), so events of one organization never land
-- under two names. For the types whose text form is that text (integers,
-- numeric, uuid, text, varchar, boolean), the cast; for any other (a char(n)
-- keeps its padding in JSON, dates and times are spelt differently), through
-- to_jsonb.
CREATE OR REPLACE FUNCTION "crm_realtime"."_org_sql"(p_table regclass, p_org name, p_rec text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN (SELECT atttypid FROM pg_catalog.pg_attribute
                       WHERE attrelid = p_table AND attname = p_org AND attnum > 0 AND NOT attisdropped)
                     IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                         'uuid'::regtype, 'text'::regtype, 'varchar'::regtype, 'bool'::regtype)
                THEN format('%s.%I::text', p_rec, p_org)
                ELSE format('(pg_catalog.to_jsonb(%s.%I) #>> ''{}'')', p_rec, p_org) END
$$;

-- The columns the direct payload of p_rec reads, and the organization column:
-- what the INSERT trigger prepares a query of before reading them directly.
CREATE OR REPLACE FUNCTION "crm_realtime"."_columns_sql"(p_table regclass, p_fields jsonb,
                                                          p_org name, p_rec text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.string_agg(format('%s.%I', p_rec, c), ', ' ORDER BY c)
      FROM (SELECT p_org::text AS c
            UNION
            SELECT f.value #>> '{}' FROM pg_catalog.jsonb_each(p_fields) AS f
             WHERE f.value #>> '{}' IS NOT NULL) AS cols
$$;

-- True when no published column differs between NEW and OLD, read straight
-- from the records (the fast path's _unchanged_sql): one comparison of the
-- published columns' stored bytes (record_image_eq, the *= of the UPDATE
-- trigger's WHEN clause, defined for every type). Equal bytes are equal JSON, so this never hides a
-- change the JSON comparison would see.
CREATE OR REPLACE FUNCTION "crm_realtime"."_unchanged_direct_sql"(p_table regclass, p_fields jsonb,
                                                                   p_kind text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_field text;
    v_col   text;
    v_new   text := '';
    v_old   text := '';
BEGIN
    FOREACH v_field IN ARRAY "crm_realtime"."event_fields"(p_kind) LOOP
        v_col := p_fields ->> v_field;
        CONTINUE WHEN v_col IS NULL OR v_field = 'id';
        v_new := v_new || CASE WHEN v_new = '' THEN '' ELSE ', ' END || format('NEW.%I', v_col);
        v_old := v_old || CASE WHEN v_old = '' THEN '' ELSE ', ' END || format('OLD.%I', v_col);
    END LOOP;
    RETURN CASE WHEN v_new = '' THEN 'true'
                ELSE format('pg_catalog.record_image_eq(ROW(%s), ROW(%s))', v_new, v_old) END;
END
$$;

-- The name of a watched table's expansion function (see _generate), next to its
-- trigger function "capture_<table>": "expand_<table>".
CREATE OR REPLACE FUNCTION "crm_realtime"."_expand_name"(p_function_name name)
RETURNS name LANGUAGE sql IMMUTABLE AS $$
    SELECT ('expand_' || substr(p_function_name, 9))::name
$$;

-- expand(): what the sidecar calls for a compact journal row (op 'created_many',
-- data {"table": <oid>, "uuids" / "keys" / "ids": the keys}, one per organization of a multi-row
-- INSERT): one (part, payload) per key still in that organization, from the
-- table's generated expansion function. A table no longer watched has nothing
-- to publish. SECURITY DEFINER, granted like the journal (sql/README.md step 4):
-- it hands out the rows' published fields, which a journal reader sees anyway.
CREATE OR REPLACE FUNCTION "crm_realtime"."expand"(p_org text, p_data jsonb)
RETURNS TABLE (part int, data jsonb) LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fn   name;
    v_keys text[];
    v_raw  bytea;
BEGIN
    SELECT w."function_name" INTO v_fn FROM "crm_realtime"."watched_table" AS w
     WHERE w."relation" = (p_data ->> 'table')::oid AND w."kind" = 'prospect';
    IF v_fn IS NULL THEN
        RETURN;
    END IF;
    -- the keys as text, whichever way the trigger stored them: "uuids" (32 hex
    -- digits each), "keys" (an array's text form), "ids" (a JSON array)
    IF p_data ? 'uuids' AND pg_catalog.length(p_data ->> 'uuids') = 32 THEN
        -- one key (a lean row): its 32 hex digits are a uuid's input form
        v_keys := ARRAY[(p_data ->> 'uuids')::uuid::text];
    ELSIF p_data ? 'uuids' THEN
        -- bytes, not text: substr() of a text walks it from the start each time
        v_raw := pg_catalog.decode(p_data ->> 'uuids', 'hex');
        v_keys := ARRAY(SELECT pg_catalog.encode(pg_catalog.substr(v_raw, 16 * g - 15, 16), 'hex')::uuid::text
                          FROM pg_catalog.generate_series(1, pg_catalog.length(v_raw) / 16) AS g);
    ELSIF p_data ? 'keys' THEN
        v_keys := (p_data ->> 'keys')::text[];
    ELSIF pg_catalog.jsonb_typeof(p_data -> 'ids') = 'array' THEN
        v_keys := ARRAY(SELECT pg_catalog.jsonb_array_elements_text(p_data -> 'ids'));
    ELSE
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format('SELECT * FROM "crm_realtime".%I($1, $2)', "crm_realtime"."_expand_name"(v_fn))
        USING p_org, v_keys;
EXCEPTION WHEN undefined_function THEN
    -- cannot happen while the table is watched; never stall the sidecar's reads
    RAISE WARNING 'crm_realtime: no expansion function for table %: run SELECT * FROM crm_realtime.repair()',
        p_data ->> 'table';
END
$$;
REVOKE ALL ON FUNCTION "crm_realtime"."expand"(text, jsonb) FROM PUBLIC;
-- Upgrading from a version without it: the roles that read the journal (the
-- sidecar's) may call it, as step 4 of sql/README.md now says.
DO $$
DECLARE
    v_role regrole;
BEGIN
    FOR v_role IN SELECT DISTINCT a.grantee::regrole
                    FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
                   WHERE c.oid = '"crm_realtime"."journal"'::regclass AND a.privilege_type = 'SELECT'
                     AND a.grantee <> 0 AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION "crm_realtime"."expand"(text, jsonb) TO %s', v_role);
    END LOOP;
END
$$;

-- (Re)writes a watched table's trigger function from its watched_table row with
-- Hand a generated SECURITY DEFINER function to crm_realtime_definer (see the
-- role's comment at the top), with SELECT on its table when it reads it (the
-- expansion functions). Only a superuser install does: a non-superuser's
-- functions stay its own.
CREATE OR REPLACE FUNCTION "crm_realtime"."_hand_to_definer_role"(p_function regprocedure,
                                                                  p_table regclass, p_reads boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.to_regrole('crm_realtime_definer') IS NULL
       OR NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    IF p_reads THEN
        EXECUTE format('GRANT SELECT ON %s TO "crm_realtime_definer"', p_table);
    END IF;
    EXECUTE format('ALTER FUNCTION %s OWNER TO "crm_realtime_definer"', p_function);
END
$$;

-- CREATE OR REPLACE: same function, so the triggers and their locks are untouched.
CREATE OR REPLACE FUNCTION "crm_realtime"."_generate"(p_table regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w       "crm_realtime"."watched_table"%ROWTYPE;
    v_new   text;
    v_old   text;
    v_set   text;
    v_new_direct text;
    v_old_direct text;
    v_body  text;
    v_notify text;
    v_cols  jsonb := '{}';
    v_role  text;
    v_col   text;
    v_attnum int;
    v_keytype oid;
    v_key_name text;
    v_key_t text;
    v_key_new text;
    v_payload_insert text;
    v_lean_insert text;
    v_one   text;
    a       record;
BEGIN
    SELECT * INTO w FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    IF w."relation" IS NULL THEN
        RAISE EXCEPTION 'crm_realtime: table % is not watched', p_table;
    END IF;
    v_new := "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 'n', false);
    v_old := "crm_realtime"."_unchanged_sql"(w."fields", w."kind");
    v_set := "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 'crm_j', false);
    v_new_direct := "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 'NEW', true);
    v_old_direct := "crm_realtime"."_unchanged_direct_sql"(p_table, w."fields", w."kind");

    -- The wake-up, sent only when some sidecar is waiting for one. A waiting
    -- (idle) listener holds advisory lock 1668443506/1 in shared mode; a listener
    -- that is reading anyway releases it and keeps reading until every
    -- transaction that was running at its last read has ended (see
    -- sidecar/listener.py), so this transaction's rows are read without a NOTIFY.
    -- The probe is one expression (take the lock exclusively and give it back at
    -- once), so no interrupt can fall between the two calls. When that fails,
    -- the holder is either a waiting listener (shared) or another writer's probe
    -- (exclusive, for an instant); a shared try tells them apart. Only the first
    -- notifies: while a probe holds the lock no listener can be waiting, and one
    -- that takes the lock afterwards reads once more and finds this transaction
    -- in progress. (Taking a concurrent probe for a listener made busy writers
    -- notify, one commit at a time: measured at 16 writers as waits on NOTIFY's
    -- commit lock.) Skipping NOTIFY
    -- matters: a notifying commit takes a cluster-wide lock through its WAL
    -- flush, so notifying transactions commit one at a time. With no sidecar
    -- connected at all there is nobody to wake either: it reads everything that
    -- committed meanwhile when it connects.
    -- And never when PostgreSQL's NOTIFY queue is filling up (a listener stuck
    -- in a long transaction holds it back): past the threshold a notifying
    -- commit could fail with "too many notifications in the NOTIFY queue", a CRM
    -- write failing because of us. The sidecar reads on its timer anyway.
    -- Threshold: setting crm_realtime.notify_max_queue_usage (0..1, default 0.5).
    v_notify := $n$
    IF NOT (pg_catalog.pg_try_advisory_lock(1668443506, 1)
            AND pg_catalog.pg_advisory_unlock(1668443506, 1))
       AND (pg_catalog.pg_try_advisory_lock_shared(1668443506, 1)
            AND pg_catalog.pg_advisory_unlock_shared(1668443506, 1)) THEN
        v_max := pg_catalog.current_setting('crm_realtime.notify_max_queue_usage', true);
        IF pg_catalog.pg_notification_queue_usage() <
           (CASE WHEN v_max ~ '^(0|1|0?\.[0-9]{1,9}|1\.0{1,9})$' THEN v_max::float8 ELSE 0.5 END) THEN
            -- Constant payload: PostgreSQL folds identical notifications of one
            -- transaction into one, and the payload can never reach 8000 bytes.
            PERFORM pg_catalog.pg_notify('crm_realtime', '');
        END IF;
    END IF;
$n$;

    -- the key column's attribute number (a rename not followed yet: the one recorded)
    SELECT attnum, atttypid INTO v_attnum, v_keytype FROM pg_catalog.pg_attribute
     WHERE attrelid = p_table AND attname = w."pk_column" AND attnum > 0 AND NOT attisdropped;
    v_attnum := coalesce(v_attnum, (w."columns" -> 'id' ->> 'attnum')::int);

    -- One key as compact rows store it (expand() reads both forms): a uuid as the
    -- hex of its bytes, anything else as a one-element array's text.
    v_key_name := CASE WHEN v_keytype = 'uuid'::regtype THEN 'uuids' ELSE 'keys' END;
    v_key_t := CASE WHEN v_keytype = 'uuid'::regtype
                    THEN format('pg_catalog.encode(pg_catalog.uuid_send(t.%I), ''hex'')', w."pk_column")
                    ELSE format('ARRAY[t.%I]::text', w."pk_column") END;
    v_key_new := CASE WHEN v_keytype = 'uuid'::regtype
                      THEN format('pg_catalog.encode(pg_catalog.uuid_send(NEW.%I), ''hex'')', w."pk_column")
                      ELSE format('ARRAY[NEW.%I]::text', w."pk_column") END;
    -- The journal rows of an INSERT statement below the compact threshold, read
    -- directly: a payload per row, or (lean) a key per row.
    v_payload_insert := format($p$
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            SELECT 'prospect', 'created', %3$s, %2$s
              FROM crm_realtime_new AS t
             WHERE t.%1$I IS NOT NULL
               AND NOT EXISTS (SELECT FROM crm_realtime_new OFFSET v_skip);
            GET DIAGNOSTICS v_rows = ROW_COUNT;
$p$, w."org_column", "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 't', true),
     "crm_realtime"."_org_sql"(p_table, w."org_column", 't'));
    v_lean_insert := format($p$            -- Lean rows: one per new row, holding its key only (a compact row of
            -- one key, op 'created_many'); the sidecar builds the payload when it
            -- reads it (crm_realtime.expand()). The key of a one-row INSERT is
            -- kept for this transaction, so that an UPDATE of the same row in
            -- the same transaction (an ORM's create-then-write) writes nothing:
            -- the created event is read with the row as it is then.
            WITH r AS MATERIALIZED (
                SELECT %3$s AS o, %4$s AS k FROM crm_realtime_new AS t
                 WHERE t.%1$I IS NOT NULL
                   AND NOT EXISTS (SELECT FROM crm_realtime_new OFFSET v_skip)),
            i AS (INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                  SELECT 'prospect', 'created_many', r.o, pg_catalog.jsonb_build_object('table', %2$s, %5$L, r.k)
                    FROM r)
            SELECT pg_catalog.count(*), pg_catalog.max(r.k) INTO v_rows, v_key FROM r;
            IF v_rows = 1 THEN
                PERFORM pg_catalog.set_config('crm_realtime.inserted', '%2$s:' || v_key, true);
            END IF;
$p$, w."org_column", p_table::oid, "crm_realtime"."_org_sql"(p_table, w."org_column", 't'),
     v_key_t, v_key_name);

    IF w."kind" = 'prospect' THEN
        v_body := format($f$
DECLARE
    n jsonb;
    o jsonb;
    p jsonb;
    v_org text;
    v_old_org text;
    v_max text;
    v_rows bigint;
    v_bulk int;
    v_key text;
    v_moved boolean;
    v_direct boolean;
    v_skip int8;
    k jsonb;
    q jsonb;
    v_tx xid8;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        -- A statement of at least crm_realtime.bulk_min_rows rows (default 100;
        -- 0: never) writes one compact row per organization holding only the
        -- new rows' keys (op 'created_many'); the sidecar builds their payloads
        -- when it reads it, with crm_realtime.expand() (see _generate).
        -- A small INSERT is one statement, as before: whether it has fewer rows
        -- than the threshold is a one-time filter of it (a separate count query
        -- cost each single-row INSERT 5-9 µs more); the setting is read once,
        -- before (callgrind: the same instructions as reading it in the filter).
        -- OFFSET 0 keeps the row-to-JSON conversion in the subquery: once per row,
        -- not once per published field
        -- The columns are read directly (measured with callgrind: the row as
        -- JSON was ~60k instructions of a single-row INSERT's trigger) once a
        -- query naming them has been prepared: a block that only reads, so no
        -- subtransaction id. If one was renamed or dropped since this function
        -- was written, the same goes through the rows as JSON, which cannot
        -- fail. Between the two nothing can change: this statement holds the
        -- table against ALTER TABLE.
        -- the rows past which the statement is compact (the setting, read once)
        v_max := pg_catalog.current_setting('crm_realtime.bulk_min_rows', true);
        v_skip := CASE WHEN v_max IS NULL THEN 99
                       WHEN v_max ~ '^0{1,9}$' THEN 9223372036854775807    -- 0: never compact
                       WHEN v_max ~ '^[0-9]{1,9}$' THEN v_max::int8 - 1
                       ELSE 99 END;
        BEGIN
            PERFORM %13$s FROM crm_realtime_new AS t LIMIT 0;
            v_direct := true;
        EXCEPTION WHEN OTHERS THEN
            v_direct := false;
        END;
        IF v_direct THEN
%22$s        ELSE
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            SELECT 'prospect', 'created', crm_j->>%1$L, %6$s
              FROM (SELECT pg_catalog.to_jsonb(t) AS crm_j FROM crm_realtime_new AS t OFFSET 0) AS s
             WHERE crm_j->>%1$L IS NOT NULL
               AND NOT EXISTS (SELECT FROM crm_realtime_new OFFSET v_skip);
            GET DIAGNOSTICS v_rows = ROW_COUNT;
        END IF;
        IF v_rows = 0 THEN
            v_max := pg_catalog.current_setting('crm_realtime.bulk_min_rows', true);
            v_bulk := CASE WHEN v_max IS NULL THEN 100 WHEN v_max ~ '^[0-9]{1,9}$' THEN v_max::int ELSE 100 END;
        END IF;
        IF v_rows = 0 AND v_bulk > 0 THEN
            -- nothing journaled: v_bulk rows or more (or none with an organization)
            BEGIN
                -- the two columns read directly: no row-to-JSON conversion per row
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                SELECT 'prospect', 'created_many', %16$s,
                       pg_catalog.jsonb_build_object('table', %7$s, %9$s)
                  FROM crm_realtime_new AS t
                 WHERE t.%1$I IS NOT NULL
                   AND (SELECT pg_catalog.count(*) FROM (SELECT FROM crm_realtime_new LIMIT v_bulk) AS c) >= v_bulk
                 GROUP BY t.%1$I;
            EXCEPTION WHEN OTHERS THEN
                -- a column renamed, dropped or retyped since this function was
                -- written: the same through the row as JSON, which cannot fail;
                -- the key by its attribute number (what expand() looks it up by)
                v_key := coalesce((SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                    WHERE a.attrelid = %7$s AND a.attnum = %8$s AND NOT a.attisdropped), %2$L);
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                SELECT 'prospect', 'created_many', crm_j->>%1$L,
                       pg_catalog.jsonb_build_object('table', %7$s, 'ids', pg_catalog.jsonb_agg(crm_j->v_key))
                  FROM (SELECT pg_catalog.to_jsonb(t) AS crm_j FROM crm_realtime_new AS t OFFSET 0) AS s
                 WHERE crm_j->>%1$L IS NOT NULL
                   AND (SELECT pg_catalog.count(*) FROM (SELECT FROM crm_realtime_new LIMIT v_bulk) AS c) >= v_bulk
                 GROUP BY 3;
            END;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
        END IF;
        IF v_rows = 0 THEN RETURN NULL; END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Row triggers read the columns straight from NEW and OLD (fast path).
        -- Nothing in the block writes, so it never takes a subtransaction id,
        -- and any error in it is caught (WHEN OTHERS, which never catches a
        -- cancel): a column renamed or dropped since this function was written
        -- (undefined_column), or retyped under a session that had prepared the
        -- old type (datatype_mismatch, until it reconnects). The handler does
        -- the same through the rows as JSON, which cannot fail: the CRM's write
        -- goes through.
        BEGIN
            v_org := %14$s;
            v_old_org := %15$s;
            v_moved := v_org IS DISTINCT FROM v_old_org
                       OR NOT pg_catalog.record_image_eq(ROW(NEW.%2$I), ROW(OLD.%2$I));
            IF v_moved THEN
                k := pg_catalog.to_jsonb(OLD.%2$I);
                p := %10$s;
                q := %20$s;
            ELSIF v_org IS NOT NULL AND NOT (%11$s) THEN
                %23$s
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_key := NULL;
            n := pg_catalog.to_jsonb(NEW);
            o := pg_catalog.to_jsonb(OLD);
            v_org := n->>%1$L;
            v_old_org := o->>%1$L;
            v_moved := v_org IS DISTINCT FROM v_old_org OR n->%2$L IS DISTINCT FROM o->%2$L;
            k := o->%2$L;
            p := NULL;
            q := %21$s;
            IF v_moved OR (v_org IS NOT NULL AND NOT (%4$s)) THEN
                p := %3$s;
            END IF;
        END;
        IF NOT v_moved THEN
            IF v_key IS NOT NULL THEN
                -- inserted by this same transaction: its created row says it all.
                -- The setting is only a cheap first test (any session can set it):
                -- the fold also needs this transaction's last journal row to be
                -- the created row of that key in this row's organization (a key
                -- unique only per organization must not let a decoy inserted in
                -- another one hide this update). That is one backward probe of the
                -- journal's primary key (txid, id), however many rows the
                -- transaction wrote; the function plans with enable_seqscan off,
                -- so a plan made while the journal was small never scans it once
                -- it is large. (The transaction id is a variable: a volatile call
                -- in the query would keep the index out.) When anything was
                -- journaled in between, the UPDATE simply journals its own row.
                IF pg_catalog.current_setting('crm_realtime.inserted', true) = '%7$s:' || v_key THEN
                    v_tx := pg_catalog.pg_current_xact_id();
                    IF (SELECT j."op" = 'created_many' AND j."organization_id" = v_org
                               AND j."data" = pg_catalog.jsonb_build_object('table', %7$s, %19$L, v_key)
                          FROM "crm_realtime"."journal" AS j
                         WHERE j."txid" = v_tx
                         ORDER BY j."id" DESC LIMIT 1) THEN
                        RETURN NULL;
                    END IF;
                END IF;
                -- a lean row (op 'updated_many', one key): the sidecar reads the
                -- payload with the row as it is then, like a compact row's
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                VALUES ('prospect', 'updated_many', v_org, pg_catalog.jsonb_build_object('table', %7$s, %19$L, v_key));
            ELSE
                -- p is null when no published column changed (say only internal_score): no event
                IF p IS NULL THEN RETURN NULL; END IF;
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                VALUES ('prospect', 'updated', v_org, p);
            END IF;
        ELSE
            -- moved to another organization (or its key changed): gone for the
            -- old organization, new for the new one
            IF v_org IS NULL AND v_old_org IS NULL THEN RETURN NULL; END IF;
            IF v_old_org IS NOT NULL THEN
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                VALUES ('prospect', 'deleted', v_old_org, %24$s);
            END IF;
            IF v_org IS NOT NULL THEN
                INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
                VALUES ('prospect', 'created', v_org, p);
            END IF;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        -- A deleted row carries the row's last published state ("last", never
        -- sent: the event is {id}): the sidecar builds the events of lean rows
        -- written before it and read with it from that, the row being gone.
        BEGIN
            v_old_org := %15$s;
            k := pg_catalog.to_jsonb(OLD.%2$I);
            q := %20$s;
        EXCEPTION WHEN OTHERS THEN
            o := pg_catalog.to_jsonb(OLD);
            v_old_org := o->>%1$L;
            k := o->%2$L;
            q := %21$s;
        END;
        IF v_old_org IS NULL THEN RETURN NULL; END IF;
        INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
        VALUES ('prospect', 'deleted', v_old_org, %24$s);
    ELSE
        -- a row-level INSERT (a partition, or a partitioned table: see _create_triggers)
        BEGIN
            v_org := %14$s;
            IF v_org IS NOT NULL THEN
                %25$s
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_key := NULL;
            n := pg_catalog.to_jsonb(NEW);
            v_org := n->>%1$L;
            p := %3$s;
        END;
        IF v_org IS NULL THEN RETURN NULL; END IF;
        IF v_key IS NOT NULL THEN
            -- lean: the key only, kept for this transaction as the statement
            -- trigger keeps it, so that the same folding applies
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'created_many', v_org, pg_catalog.jsonb_build_object('table', %7$s, %19$L, v_key));
            PERFORM pg_catalog.set_config('crm_realtime.inserted', '%7$s:' || v_key, true);
        ELSE
            INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "data")
            VALUES ('prospect', 'created', v_org, p);
        END IF;
    END IF;
%5$s
    RETURN NULL;
END
$f$, w."org_column", w."pk_column", v_new, v_old, v_notify, v_set, p_table::oid, coalesce(v_attnum, 0),
     -- The keys, in the statement's order. A uuid's text form is slow to make
     -- (measured: 6 ms of the 10,000-row import, the compact row's whole cost
     -- again), so uuid keys are stored as one hex string of their bytes.
     CASE WHEN v_keytype = 'uuid'::regtype
          THEN format($k$'uuids', pg_catalog.encode(pg_catalog.string_agg(pg_catalog.uuid_send(t.%I), ''::bytea), 'hex')$k$,
                      w."pk_column")
          ELSE format($k$'keys', pg_catalog.array_agg(t.%I)::text$k$, w."pk_column") END,
     v_new_direct, v_old_direct,
     "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 't', true),
     CASE WHEN w."lean" THEN format('t.%I, t.%I', w."org_column", w."pk_column")
          ELSE "crm_realtime"."_columns_sql"(p_table, w."fields", w."org_column", 't') END,
     "crm_realtime"."_org_sql"(p_table, w."org_column", 'NEW'),
     "crm_realtime"."_org_sql"(p_table, w."org_column", 'OLD'),
     "crm_realtime"."_org_sql"(p_table, w."org_column", 't'),
     -- one key as the compact rows store it, from the transition table (17) and
     -- from NEW (18), and its name in the row (19)
     v_key_t, v_key_new, v_key_name,
     -- the old row's payload (a deleted row's "last"), directly (20) and as JSON (21)
     CASE WHEN w."lean" THEN "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 'OLD', true) ELSE 'NULL' END,
     CASE WHEN w."lean" THEN "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 'o', false) ELSE 'NULL' END,
     -- the INSERT's journal rows (22), an UPDATE's (23), a deleted row's data (24)
     CASE WHEN w."lean" THEN v_lean_insert ELSE v_payload_insert END,
     CASE WHEN w."lean" THEN 'v_key := ' || v_key_new || ';      -- lean: the key only'
          ELSE 'p := ' || v_new_direct || ';' END,
     CASE WHEN w."lean" THEN $q$pg_catalog.jsonb_build_object('id', k, 'last', q)$q$
          ELSE $q$pg_catalog.jsonb_build_object('id', k)$q$ END,
     -- a row-level INSERT's (25): the key (lean) or the payload
     CASE WHEN w."lean" THEN 'v_key := ' || v_key_new || ';'
          ELSE 'p := ' || v_new_direct || ';' END);
    ELSE
        v_body := format($f$
DECLARE
    n jsonb;
    v_org text;
    v_max text;
    v_rows bigint;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "user_id", "data")
        SELECT 'notification', 'created', crm_j->>%1$L, %6$s, %7$s
          FROM (SELECT pg_catalog.to_jsonb(t) AS crm_j FROM crm_realtime_new AS t OFFSET 0) AS s
         WHERE crm_j->>%1$L IS NOT NULL%8$s;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows = 0 THEN RETURN NULL; END IF;
    ELSE
        n := pg_catalog.to_jsonb(NEW);
        v_org := n->>%1$L;
        IF v_org IS NULL%5$s THEN RETURN NULL; END IF;
        INSERT INTO "crm_realtime"."journal" ("kind", "op", "organization_id", "user_id", "data")
        VALUES ('notification', 'created', v_org, %2$s, %3$s);
    END IF;
%4$s
    RETURN NULL;
END
$f$, w."org_column",
     CASE WHEN w."user_column" IS NULL THEN 'NULL' ELSE format('n->>%L', w."user_column") END,
     v_new, v_notify,
     -- a user-addressed notification whose user column is gone is not sent to
     -- the whole organization: it is not published at all
     CASE WHEN w."user_column" IS NULL THEN '' ELSE format(' OR NOT n ? %L', w."user_column") END,
     CASE WHEN w."user_column" IS NULL THEN 'NULL' ELSE format('crm_j->>%L', w."user_column") END,
     v_set,
     CASE WHEN w."user_column" IS NULL THEN '' ELSE format(' AND crm_j ? %L', w."user_column") END);
    END IF;

    -- SECURITY DEFINER: the CRM's roles need no right on our schema, and no
    -- role but the installer's can write journal rows (forged events).
    -- The fixed search_path keeps a caller's search_path out of the definer's rights.
    -- A lean function also plans with enable_seqscan off: its one lookup (the
    -- fold's, by the journal's primary key) must stay an index probe whatever
    -- the journal's size was when it was planned. It reads nothing else that
    -- the setting could change (the new rows are a transition table).
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION "crm_realtime".%I() RETURNS trigger LANGUAGE plpgsql '
        'SECURITY DEFINER SET search_path = pg_catalog, pg_temp%s AS %L', w."function_name",
        CASE WHEN w."lean" THEN ' SET enable_seqscan = off' ELSE '' END, v_body);
    EXECUTE format('REVOKE ALL ON FUNCTION "crm_realtime".%I() FROM PUBLIC', w."function_name");
    PERFORM "crm_realtime"."_hand_to_definer_role"(
        format('"crm_realtime".%I()', w."function_name")::regprocedure, p_table, false);

    -- Its companion for compact rows ('created_many', prospects only), called by
    -- the sidecar through crm_realtime.expand() when it reads one: the current
    -- payload of each key that is still a row of that organization, built by the
    -- same expression as the trigger's (so a renamed, dropped or retyped column
    -- is published exactly as the trigger would publish it), numbered by the
    -- key's place in the row (1-based). A key whose row is gone or belongs to
    -- another organization now is skipped: the journal rows written since say
    -- what became of it. The key column is found by its attribute number when
    -- called (a rename without repair() loses nothing) and compared in its own
    -- type (an index lookup); if its type no longer takes the stored keys, as
    -- text. STABLE: it reads with the snapshot of the sidecar's statement, so a
    -- payload is never newer than the journal rows that statement reads.
    -- One key (a lean row, or an import of one row) whose column is unique
    -- first goes through a query written here, planned once per session: the
    -- general path below plans two queries per call (measured: about 150 µs per
    -- lean row read). The general path answers whenever this one does not find
    -- exactly one row (the row gone or moved; several rows: a unique index
    -- dropped since, a parent and a child sharing a key) or fails (a column
    -- renamed, dropped or retyped since). The query names the table, which a
    -- rename nobody followed (no event trigger, ALTER SCHEMA ... RENAME) can give
    -- to another relation, a view whose columns run code as this function's
    -- owner for instance: so it also tests that the name still is the watched
    -- table, a constant PostgreSQL folds when it plans, so that another relation
    -- under the name is never read. Every name in it is schema-qualified (the
    -- caller's pg_temp is searched for types), and the organization compares
    -- byte for byte (a column's nondeterministic collation does not apply).
    IF w."kind" = 'prospect' THEN
        IF v_attnum IS NOT NULL AND EXISTS (
               SELECT FROM pg_catalog.pg_index AS i
                WHERE i.indrelid = p_table AND i.indisunique AND i.indnkeyatts = 1
                  AND i.indkey[0] = v_attnum AND i.indpred IS NULL AND i.indexprs IS NULL) THEN
            v_one := format($o$
    IF pg_catalog.cardinality(p_ids) = 1 THEN
        BEGIN
            SELECT %1$s INTO STRICT v_data FROM %2$s AS t
             WHERE %2$L::pg_catalog.regclass OPERATOR(pg_catalog.=) %3$s::pg_catalog.oid
               AND t.%4$I = p_ids[1]::%5$s AND (%6$s) COLLATE pg_catalog."C" = p_org;
            part := 1;
            data := v_data;
            RETURN NEXT;
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            NULL;       -- none, several, or a column changed since: the general path
        END;
    END IF;
$o$, "crm_realtime"."_payload_expr"(p_table, w."fields", w."kind", 't', true),
                (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class AS c
                   JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = p_table),
                p_table::oid, w."pk_column",
                (SELECT format('%I.%I', n.nspname, t.typname) FROM pg_catalog.pg_type AS t
                   JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace WHERE t.oid = v_keytype),
                "crm_realtime"."_org_sql"(p_table, w."org_column", 't'));
        END IF;
        v_body := format($e$
DECLARE
    v_pk   name;
    v_type text;
    v_data jsonb;
BEGIN
%5$s
    SELECT attname, pg_catalog.format_type(atttypid, atttypmod) INTO v_pk, v_type
      FROM pg_catalog.pg_attribute WHERE attrelid = %1$s AND attnum = %2$s AND NOT attisdropped;
    IF v_pk IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        -- ORDER BY: every row is computed before the first is returned, so an
        -- error here returns nothing and the fallback below returns it all.
        -- OFFSET 0: one index lookup per key, never a scan of the whole table
        -- with the organization test pushed into it (which the planner chose
        -- for a 10,000-row table: 125 µs per key instead of 5)
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT i.ord::int, %%s FROM pg_catalog.unnest($1) WITH ORDINALITY AS i(id, ord) '
            'CROSS JOIN LATERAL (SELECT pg_catalog.to_jsonb(t) AS crm_j FROM %%s AS t WHERE t.%%I = i.id::%%s OFFSET 0) AS r '
            'WHERE r.crm_j->>%%L = $2 ORDER BY i.ord',
            %3$L, %1$s::regclass, v_pk, v_type, %4$L) USING p_ids, p_org;
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT i.ord::int, %%s FROM pg_catalog.unnest($1) WITH ORDINALITY AS i(id, ord) '
            'JOIN (SELECT pg_catalog.to_jsonb(t) AS crm_j, t.%%I::text AS crm_k FROM %%s AS t) AS r ON r.crm_k = i.id '
            'WHERE r.crm_j->>%%L = $2 ORDER BY i.ord',
            %3$L, v_pk, %1$s::regclass, %4$L) USING p_ids, p_org;
    END;
END
$e$, p_table::oid, coalesce(v_attnum, 0), v_set, w."org_column", coalesce(v_one, ''));
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION "crm_realtime".%I(p_org text, p_ids text[]) '
            'RETURNS TABLE (part int, data jsonb) LANGUAGE plpgsql STABLE '
            'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
            "crm_realtime"."_expand_name"(w."function_name"), v_body);
        EXECUTE format('REVOKE ALL ON FUNCTION "crm_realtime".%I(text, text[]) FROM PUBLIC',
                       "crm_realtime"."_expand_name"(w."function_name"));
        PERFORM "crm_realtime"."_hand_to_definer_role"(
            format('"crm_realtime".%I(text, text[])', "crm_realtime"."_expand_name"(w."function_name"))::regprocedure,
            p_table, true);
    END IF;

    -- Record what the function was written for.
    FOR v_role, v_col IN
        SELECT f.key, f.value #>> '{}' FROM jsonb_each(w."fields") AS f
        UNION ALL SELECT '@org', w."org_column"::text
        UNION ALL SELECT '@user', w."user_column"::text WHERE w."user_column" IS NOT NULL
    LOOP
        SELECT attnum, atttypid::regtype::text AS typ INTO a FROM pg_catalog.pg_attribute
         WHERE attrelid = p_table AND attname = v_col AND attnum > 0 AND NOT attisdropped;
        v_cols := v_cols || jsonb_build_object(v_role, CASE WHEN v_col IS NULL THEN NULL
            ELSE jsonb_build_object('column', v_col, 'attnum', a.attnum, 'type', a.typ) END);
    END LOOP;
    UPDATE "crm_realtime"."watched_table" SET "columns" = v_cols WHERE "relation" = p_table;
END
$$;

-- The triggers. They name no column (the UPDATE one compares whole rows by
-- their stored bytes, which works for every type), so they never stand in the
-- way of an ALTER TABLE.
CREATE OR REPLACE FUNCTION "crm_realtime"."_create_triggers"(p_table regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w "crm_realtime"."watched_table"%ROWTYPE;
    v_trigger name;
    -- PostgreSQL 14 and later replace a trigger in place (CREATE OR REPLACE
    -- TRIGGER: a SHARE ROW EXCLUSIVE lock, which lets the CRM's reads go on);
    -- before, it is dropped (ACCESS EXCLUSIVE) and created again
    v_create text := CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000
                          THEN 'CREATE OR REPLACE TRIGGER' ELSE 'CREATE TRIGGER' END;
BEGIN
    SELECT * INTO w FROM "crm_realtime"."watched_table" WHERE "relation" = p_table;
    IF v_create = 'CREATE TRIGGER' THEN
        FOR v_trigger IN SELECT tgname FROM pg_catalog.pg_trigger
                          WHERE tgrelid = p_table AND NOT tgisinternal
                            AND tgname IN ('crm_realtime_capture', 'crm_realtime_capture_update',
                                           'crm_realtime_capture_delete') LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, p_table);
        END LOOP;
    END IF;
    -- INSERT: once per statement, over the statement's new rows (a transition
    -- table), so a 10,000-row import is one INSERT ... SELECT into the journal,
    -- not 10,000 function calls. Except on a partition: an INSERT through its
    -- partitioned parent fires only the parent's statement triggers, so a
    -- partition gets the row-level trigger (as does anything refusing
    -- transition tables). And except on a partitioned prospects table: an
    -- UPDATE that moves a row to another partition is a DELETE from the old
    -- one and an INSERT into the new one, which fires no UPDATE trigger and
    -- no statement-level INSERT trigger, only the partitions' row-level ones;
    -- with a statement-level INSERT trigger the new organization never heard
    -- of the row. Row level there, cloned to every partition: the move is
    -- journaled as deleted (old organization) then created (new one).
    v_trigger := NULL;
    IF NOT (SELECT c.relispartition OR (c.relkind = 'p' AND w."kind" = 'prospect')
              FROM pg_catalog.pg_class AS c WHERE c.oid = p_table) THEN
        BEGIN
            EXECUTE format(
                '%s %I AFTER INSERT ON %s REFERENCING NEW TABLE AS crm_realtime_new '
                'FOR EACH STATEMENT EXECUTE FUNCTION "crm_realtime".%I()',
                v_create, 'crm_realtime_capture', p_table, w."function_name");
            v_trigger := 'crm_realtime_capture';
        EXCEPTION WHEN feature_not_supported OR wrong_object_type THEN
            NULL;
        END;
    END IF;
    IF v_trigger IS NULL THEN
        EXECUTE format(
            '%s %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION "crm_realtime".%I()',
            v_create, 'crm_realtime_capture', p_table, w."function_name");
    END IF;
    IF w."kind" = 'prospect' THEN
        -- No WHEN clause: the function compares the published columns anyway,
        -- and PostgreSQL re-reads and re-prepares a trigger's WHEN expression
        -- for every UPDATE statement (measured with callgrind: WHEN (OLD *<> NEW)
        -- was 26k instructions of each single-row UPDATE, against a few for an
        -- UPDATE that changes nothing to run the function's own test).
        EXECUTE format(
            '%s %I AFTER UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION "crm_realtime".%I()',
            v_create, 'crm_realtime_capture_update', p_table, w."function_name");
        EXECUTE format(
            '%s %I AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION "crm_realtime".%I()',
            v_create, 'crm_realtime_capture_delete', p_table, w."function_name");
    END IF;
END
$$;

-- True when a watched table has the triggers this version creates.
CREATE OR REPLACE FUNCTION "crm_realtime"."_triggers_current"(p_table regclass, p_kind text)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT count(*) = CASE p_kind WHEN 'prospect' THEN 3 ELSE 1 END
      FROM pg_catalog.pg_trigger
     WHERE tgrelid = p_table AND NOT tgisinternal
       AND ((tgname = 'crm_realtime_capture' AND tgtype & (4 | 8 | 16) = 4
             AND CASE WHEN p_kind = 'prospect'
                           AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = p_table) = 'p'
                      THEN tgtype & 1 = 1   -- row level on a partitioned prospects table
                      ELSE (tgtype & 1 = 0  -- statement level, or row level on a partition
                            OR (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = p_table)) END)
            OR (tgname = 'crm_realtime_capture_update' AND p_kind = 'prospect' AND tgtype & 16 = 16
                AND tgqual IS NULL)
            OR (tgname = 'crm_realtime_capture_delete' AND p_kind = 'prospect' AND tgtype & 8 = 8))
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
-- It generates one trigger function per table with the column names written in
-- as JSON keys, so the per-row cost is one row-to-JSON conversion, a few key
-- lookups and one INSERT; no dynamic SQL runs at write time. Identifiers are
-- validated against the catalog and quoted with format('%I'/'%L'). Prospects get
-- INSERT/UPDATE/DELETE triggers; an UPDATE that changes no published column
-- writes nothing. Notifications get an INSERT trigger only: the contract has no
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
    v_lean     boolean;
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
    END LOOP;

    -- a table watched again keeps its capture mode (crm_realtime.lean())
    v_lean := coalesce((SELECT "lean" FROM "crm_realtime"."watched_table" WHERE "relation" = p_table), false)
              AND p_kind = 'prospect';
    PERFORM "crm_realtime"."unwatch"(p_table);
    INSERT INTO "crm_realtime"."watched_table"
        ("relation", "kind", "pk_column", "org_column", "user_column", "fields", "function_name", "lean")
    VALUES (p_table, p_kind, p_pk_column, p_org_column, p_user_column, v_map,
            left('capture_' || replace(p_table::text, '"', ''), 63), v_lean);
    PERFORM "crm_realtime"."_generate"(p_table);
    PERFORM "crm_realtime"."_create_triggers"(p_table);
END
$$;

-- Lean capture of a watched prospects table, on (default) or off. Lean: an
-- INSERT or UPDATE journals the row's key only, the sidecar reads the payload
-- from the row when it reads the journal, and an UPDATE of a row that the same
-- transaction inserted journals nothing. Cheaper for the CRM's writes; the
-- events' payloads are the rows as they are when read (see sql/README.md).
-- Needs a sidecar of this version (older ones send nothing for lean rows).
-- Rewrites the table's trigger function (no lock on the table).
CREATE OR REPLACE FUNCTION "crm_realtime"."lean"(p_table regclass, p_on boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM "crm_realtime"."watched_table" WHERE "relation" = p_table) THEN
        RAISE EXCEPTION 'crm_realtime.lean: table % is not watched (call crm_realtime.watch() first)', p_table;
    END IF;
    IF p_on AND (SELECT "kind" FROM "crm_realtime"."watched_table" WHERE "relation" = p_table) <> 'prospect' THEN
        RAISE EXCEPTION 'crm_realtime.lean: table % is a notification source; lean capture is for prospects only', p_table;
    END IF;
    UPDATE "crm_realtime"."watched_table" SET "lean" = coalesce(p_on, false) WHERE "relation" = p_table;
    PERFORM "crm_realtime"."_generate"(p_table);
END
$$;

-- revalidate(): bring one watched table's mapping up to date with its columns.
-- A mapped column that was renamed (same attribute number, new name) is followed:
-- the mapping takes the new name and the field keeps being fed. A mapped column
-- that is gone stays in the mapping (a column of that name added back is picked
-- up again) and its field is published as null. The trigger function is then
-- rewritten. Returns one line per change or problem. Never raises for a column
-- problem: this runs inside the CRM's own ALTER TABLE (see on_ddl below).
CREATE OR REPLACE FUNCTION "crm_realtime"."revalidate"(p_table regclass)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    w      "crm_realtime"."watched_table"%ROWTYPE;
    v_role text;
    v_old  jsonb;
    v_name name;
    v_new  name;
BEGIN
    SELECT * INTO w FROM "crm_realtime"."watched_table" WHERE "relation" = p_table FOR UPDATE;
    IF w."relation" IS NULL THEN
        RETURN;
    END IF;
    FOR v_role, v_old IN SELECT key, value FROM jsonb_each(w."columns")
                          WHERE jsonb_typeof(value) = 'object' LOOP
        v_name := v_old ->> 'column';
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                               WHERE attrelid = p_table AND attname = v_name AND attnum > 0
                                 AND NOT attisdropped);
        SELECT attname INTO v_new FROM pg_catalog.pg_attribute
         WHERE attrelid = p_table AND attnum = (v_old ->> 'attnum')::int AND NOT attisdropped;
        IF v_new IS NULL THEN
            CONTINUE WHEN v_old ->> 'attnum' IS NULL;     -- already known to be missing
            RETURN NEXT format('%s: column %I (%s) no longer exists; it is published as null',
                               p_table, v_name,
                               CASE v_role WHEN '@org' THEN 'the organization: nothing of this table is published'
                                           WHEN '@user' THEN 'the addressed user: nothing of this table is published'
                                           ELSE 'field ' || v_role END);
            CONTINUE;
        END IF;
        RETURN NEXT format('%s: column %I was renamed to %I; %s follows it', p_table, v_name, v_new,
                           CASE v_role WHEN '@org' THEN 'the organization' WHEN '@user' THEN 'the user'
                                       ELSE 'field ' || v_role END);
        IF v_role = '@org' THEN
            w."org_column" := v_new;
        ELSIF v_role = '@user' THEN
            w."user_column" := v_new;
        ELSE
            w."fields" := jsonb_set(w."fields", ARRAY[v_role], to_jsonb(v_new::text));
            IF v_role = 'id' THEN
                w."pk_column" := v_new;
            END IF;
        END IF;
    END LOOP;
    UPDATE "crm_realtime"."watched_table"
       SET "fields" = w."fields", "pk_column" = w."pk_column", "org_column" = w."org_column",
           "user_column" = w."user_column"
     WHERE "relation" = p_table;
    PERFORM "crm_realtime"."_generate"(p_table);
END
$$;

-- mapping_status: one row per mapped column of every watched table, with its
-- state: 'ok', 'missing' (published as null), 'renamed' (not followed yet: run
-- repair()), 'stale' (its type changed since the trigger function was written:
-- run repair()); and one row with field NULL for a watched table whose triggers
-- or table are gone. The sidecar reads the rows that are not 'ok' (readiness
-- detail, log, metric crm_realtime_mapping_problems).
CREATE OR REPLACE VIEW "crm_realtime"."mapping_status" AS
SELECT w."relation"::text AS "table", e.key AS "field", e.value ->> 'column' AS "column",
       CASE WHEN a.attnum IS NOT NULL
                 AND (a.atttypid = 'timestamp'::regtype) = (e.value ->> 'type' = 'timestamp without time zone')
                THEN 'ok'
            WHEN a.attnum IS NOT NULL THEN 'stale'
            WHEN r.attname IS NOT NULL THEN 'renamed'
            ELSE 'missing' END AS "state",
       CASE WHEN a.attnum IS NOT NULL
                 AND (a.atttypid = 'timestamp'::regtype) = (e.value ->> 'type' = 'timestamp without time zone')
                THEN NULL
            WHEN a.attnum IS NOT NULL
                THEN format('%s.%I changed type since its trigger was written: run SELECT * FROM crm_realtime.repair()',
                            w."relation", e.value ->> 'column')
            WHEN r.attname IS NOT NULL
                THEN format('%s.%I was renamed to %I: run SELECT * FROM crm_realtime.repair() so %s follows it',
                            w."relation", e.value ->> 'column', r.attname, e.key)
            ELSE format('%s.%I no longer exists: %s is published as null (map it again with crm_realtime.watch())',
                        w."relation", e.value ->> 'column',
                        CASE WHEN e.key IN ('@org', '@user') THEN 'nothing of this table'
                             ELSE 'field ' || e.key END)
       END AS "detail"
  FROM "crm_realtime"."watched_table" AS w
  CROSS JOIN LATERAL jsonb_each(w."columns") AS e
  LEFT JOIN pg_catalog.pg_attribute AS a
    ON a.attrelid = w."relation" AND a.attname = e.value ->> 'column' AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_attribute AS r
    ON a.attnum IS NULL AND r.attrelid = w."relation" AND r.attnum = (e.value ->> 'attnum')::int
   AND NOT r.attisdropped
 WHERE jsonb_typeof(e.value) = 'object'
UNION ALL
SELECT w."relation"::text, NULL, NULL,
       CASE WHEN c.oid IS NULL THEN 'table missing'
            WHEN t.n < CASE w."kind" WHEN 'prospect' THEN 3 ELSE 1 END THEN 'triggers missing'
            ELSE 'triggers stale' END,
       CASE WHEN c.oid IS NULL
            THEN format('watched table %s no longer exists: run SELECT crm_realtime.unwatch(%L)',
                        w."relation", w."relation"::oid)
            WHEN t.n < CASE w."kind" WHEN 'prospect' THEN 3 ELSE 1 END
            THEN format('%s has lost its capture triggers: run SELECT * FROM crm_realtime.repair()', w."relation")
            -- an older version's triggers (install.sql found the table busy)
            ELSE format('%s has capture triggers of an older version%s: run SELECT * FROM crm_realtime.repair() '
                        '(or install.sql again) at a quieter moment', w."relation",
                        CASE WHEN c.relkind = 'p' AND w."kind" = 'prospect'
                             THEN ', which lose rows moved between its partitions and rows inserted '
                                  'into a partition directly'
                             ELSE '' END)
       END
  FROM "crm_realtime"."watched_table" AS w
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = w."relation"
  CROSS JOIN LATERAL (
      SELECT count(*) AS n FROM pg_catalog.pg_trigger AS g
       WHERE g.tgrelid = w."relation" AND NOT g.tgisinternal
         AND g.tgname IN ('crm_realtime_capture', 'crm_realtime_capture_update',
                          'crm_realtime_capture_delete')) AS t
 WHERE c.oid IS NULL
    OR t.n < CASE w."kind" WHEN 'prospect' THEN 3 ELSE 1 END
    OR NOT "crm_realtime"."_triggers_current"(w."relation", w."kind");
COMMENT ON VIEW "crm_realtime"."mapping_status" IS
    'State of every mapped column of the watched tables; repair with crm_realtime.repair()';

-- repair(): the DBA's command after a migration (the event trigger below does the
-- same by itself when the installer was a superuser). Follows renamed columns,
-- rewrites the trigger functions, puts back lost triggers, forgets dropped
-- tables, and returns what it did and what is still degraded:
--   SELECT * FROM crm_realtime.repair();          -- every watched table
--   SELECT * FROM crm_realtime.repair('crm_lead'); -- one
CREATE OR REPLACE FUNCTION "crm_realtime"."repair"(p_table regclass DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    w "crm_realtime"."watched_table"%ROWTYPE;
    v_line text;
BEGIN
    FOR w IN SELECT * FROM "crm_realtime"."watched_table"
              WHERE p_table IS NULL OR "relation" = p_table ORDER BY "relation"::oid LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = w."relation") THEN
            DELETE FROM "crm_realtime"."watched_table" WHERE "relation" = w."relation";
            EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I()', w."function_name");
            EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I(text, text[])',
                           "crm_realtime"."_expand_name"(w."function_name"));
            RETURN NEXT format('table %s no longer exists: no longer watched', w."relation"::oid);
            CONTINUE;
        END IF;
        FOR v_line IN SELECT "crm_realtime"."revalidate"(w."relation") LOOP
            RETURN NEXT v_line;
        END LOOP;
        IF EXISTS (SELECT 1 FROM "crm_realtime"."mapping_status"
                    WHERE "table" = w."relation"::text AND "state" = 'triggers missing') THEN
            PERFORM "crm_realtime"."_create_triggers"(w."relation");
            RETURN NEXT format('%s: capture triggers created again', w."relation");
        ELSIF NOT "crm_realtime"."_triggers_current"(w."relation", w."kind") THEN
            PERFORM "crm_realtime"."_create_triggers"(w."relation");
            RETURN NEXT format('%s: capture triggers of an older version replaced', w."relation");
        END IF;
    END LOOP;
    FOR v_line IN SELECT "detail" FROM "crm_realtime"."mapping_status"
                   WHERE "state" <> 'ok' AND (p_table IS NULL OR "table" = p_table::text) LOOP
        RETURN NEXT 'still degraded: ' || v_line;
    END LOOP;
END
$$;

-- The event triggers (only when the installer is a superuser; PostgreSQL allows
-- no one else to create them). After every ALTER TABLE of a watched table, in
-- the same transaction, the mapping is re-validated and the trigger function
-- rewritten; after a DROP TABLE the table is forgotten. They can never make the
-- CRM's DDL fail: any error of ours becomes a WARNING (and mapping_status shows
-- what is left to repair).
CREATE OR REPLACE FUNCTION "crm_realtime"."on_ddl"()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rel  oid;
    v_line text;
BEGIN
    FOR v_rel IN SELECT DISTINCT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
                  WHERE c.classid = 'pg_catalog.pg_class'::regclass
                    AND c.objid IN (SELECT "relation"::oid FROM "crm_realtime"."watched_table") LOOP
        BEGIN
            FOR v_line IN SELECT "crm_realtime"."revalidate"(v_rel::regclass) LOOP
                RAISE WARNING 'crm_realtime: %', v_line;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'crm_realtime: could not re-validate the capture of %: % (run SELECT * FROM crm_realtime.repair())',
                v_rel::regclass, SQLERRM;
        END;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'crm_realtime: DDL check skipped: % (run SELECT * FROM crm_realtime.repair())', SQLERRM;
END
$$;

CREATE OR REPLACE FUNCTION "crm_realtime"."on_drop"()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w "crm_realtime"."watched_table"%ROWTYPE;
BEGIN
    FOR w IN SELECT * FROM "crm_realtime"."watched_table"
              WHERE "relation"::oid IN (SELECT objid FROM pg_catalog.pg_event_trigger_dropped_objects()
                                         WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0) LOOP
        BEGIN
            DELETE FROM "crm_realtime"."watched_table" WHERE "relation" = w."relation";
            EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I()', w."function_name");
            EXECUTE format('DROP FUNCTION IF EXISTS "crm_realtime".%I(text, text[])',
                           "crm_realtime"."_expand_name"(w."function_name"));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'crm_realtime: could not forget dropped table %: %', w."relation"::oid, SQLERRM;
        END;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'crm_realtime: drop check skipped: %', SQLERRM;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'crm_realtime_ddl') THEN
        CREATE EVENT TRIGGER "crm_realtime_ddl" ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION "crm_realtime"."on_ddl"();
        -- fire also under session_replication_role = replica (pg_restore, logical replicas)
        ALTER EVENT TRIGGER "crm_realtime_ddl" ENABLE ALWAYS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'crm_realtime_drop') THEN
        CREATE EVENT TRIGGER "crm_realtime_drop" ON sql_drop WHEN TAG IN ('DROP TABLE')
            EXECUTE FUNCTION "crm_realtime"."on_drop"();
        ALTER EVENT TRIGGER "crm_realtime_drop" ENABLE ALWAYS;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'crm_realtime: not run by a superuser, so no event trigger: after a migration that renames, drops or retypes a watched column, run SELECT * FROM crm_realtime.repair() (writes never fail meanwhile; see sql/README.md)';
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
-- SECURITY DEFINER: only the roles the DBA grants it to may empty the journal
-- (PostgreSQL gives EXECUTE on a new function to PUBLIC).
REVOKE ALL ON FUNCTION "crm_realtime"."prune"(interval) FROM PUBLIC;

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
    v_timeout text;
BEGIN
    FOR w IN SELECT * FROM "crm_realtime"."watched_table"
              WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = "relation") LOOP
        -- tolerant of columns that went away (unlike watch(), which a DBA calls)
        PERFORM "crm_realtime"."revalidate"(w."relation");
        -- triggers of an older version (a WHEN clause, a row-level INSERT
        -- trigger) are replaced, if the table's lock comes within 200 ms: while
        -- the replacement waits for a CRM transaction in flight, the CRM's writes
        -- queue behind it (and one that holds the journal could deadlock with
        -- this file). The older triggers work with the new function meanwhile;
        -- the next run of this file replaces them.
        IF NOT "crm_realtime"."_triggers_current"(w."relation", w."kind") THEN
            v_timeout := pg_catalog.current_setting('lock_timeout');
            BEGIN
                PERFORM pg_catalog.set_config('lock_timeout', '200ms', true);
                PERFORM "crm_realtime"."_create_triggers"(w."relation");
            EXCEPTION WHEN lock_not_available THEN
                IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = w."relation") = 'p'
                   AND w."kind" = 'prospect' THEN
                    RAISE WARNING 'crm_realtime: % was busy, so its triggers of an older version stay, and they lose rows moved between its partitions and rows inserted into a partition directly: run SELECT * FROM crm_realtime.repair() (or install.sql again) at a quieter moment', w."relation";
                ELSE
                    RAISE NOTICE 'crm_realtime: % was busy, so its triggers of an older version stay (they work, a little slower): run install.sql again later to replace them', w."relation";
                END IF;
            END;
            PERFORM pg_catalog.set_config('lock_timeout', v_timeout, true);
        END IF;
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

-- No index on "recorded_at": prune() finds its cut by walking the primary key
-- in txid order until the first row young enough to keep (min(txid) WHERE
-- recorded_at >= ..., which PostgreSQL runs as that index scan), so its cost is
-- the rows it deletes. Versions before this one had a BRIN index there, which
-- cost every journal row it indexed (measured with callgrind: 13k instructions
-- per journal INSERT, 26k of each INSERT + UPDATE transaction); it is dropped
-- here, last (so the journal is locked from here to COMMIT only, after this
-- file has taken its other locks, in the order a CRM write takes them), and
-- only if the lock comes within 200 ms: while DROP INDEX waits, the CRM's
-- journal writes queue behind it. A busy journal keeps the index (harmless)
-- until the next run of this file.
DO $$
DECLARE
    v_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF pg_catalog.to_regclass('"crm_realtime"."journal_recorded_at_brin"') IS NOT NULL THEN
        BEGIN
            PERFORM pg_catalog.set_config('lock_timeout', '200ms', true);
            DROP INDEX "crm_realtime"."journal_recorded_at_brin";
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'crm_realtime: the journal was busy, so index journal_recorded_at_brin stays (it only costs each journal write a little): run install.sql again later to drop it';
        END;
        PERFORM pg_catalog.set_config('lock_timeout', v_timeout, true);
    END IF;
END
$$;

COMMIT;
