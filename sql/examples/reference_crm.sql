-- Reference CRM schema: the host that tests and `crm-realtime demo` run against.
--
-- This is NOT part of the install. A real CRM has its own tables; this file only
-- mirrors the shape the SPA contract was written for. Undo with:
--   DROP TABLE dress_reservations, notifications, prospects, users, organizations;
--   DROP FUNCTION prospects_touch();

CREATE TABLE IF NOT EXISTS organizations (
    id   integer PRIMARY KEY,
    name text
);

CREATE TABLE IF NOT EXISTS users (
    id              integer PRIMARY KEY,
    organization_id integer REFERENCES organizations,
    email           text
);

CREATE TABLE IF NOT EXISTS prospects (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id integer NOT NULL,
    firstname       text,
    lastname        text,
    email           text,
    phone           text,
    status          text,
    source          text,
    notes           text,
    -- a column the SPA never sees: changing only it must not emit an event
    internal_score  integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- As a CRM does: updated_at moves when a row changes (internal_score, which the
-- SPA never sees, excepted), unless the statement set it itself. Written against
-- the row as JSON so that migrations of any column cannot break it.
CREATE OR REPLACE FUNCTION prospects_touch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n jsonb := to_jsonb(NEW);
    o jsonb := to_jsonb(OLD);
BEGIN
    IF n->'updated_at' IS NOT DISTINCT FROM o->'updated_at'
       AND n - 'updated_at' - 'internal_score' IS DISTINCT FROM o - 'updated_at' - 'internal_score' THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object('updated_at', now()));
    END IF;
    RETURN NEW;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'prospects_touch'
                      AND tgrelid = 'prospects'::regclass) THEN
        CREATE TRIGGER prospects_touch BEFORE UPDATE ON prospects
            FOR EACH ROW EXECUTE FUNCTION prospects_touch();
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS notifications (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id integer NOT NULL,
    user_id         integer NULL,
    type            text NOT NULL,
    title           text,
    message         text,
    meta            jsonb NOT NULL DEFAULT '{}',
    seen_at         timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A heavy relation hanging off prospects: it must never appear in an event.
CREATE TABLE IF NOT EXISTS dress_reservations (
    id          serial PRIMARY KEY,
    prospect_id uuid REFERENCES prospects ON DELETE CASCADE,
    dress_code  text,
    size        text,
    reserved_on date,
    fitting_notes text
);
