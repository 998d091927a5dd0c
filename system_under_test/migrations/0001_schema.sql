-- 0001: extensions, the schema and the per-request tenant context.
--
-- Runs as atendeai_owner (see docs/platform.md "Database"). Every name is
-- schema-qualified: the migrator runs each file with
-- search_path = pg_catalog, pg_temp, so an unqualified name is an error here.

-- Both are trusted extensions: the database owner may create them without
-- being a superuser. They live in "public" so that schema atendeai holds only
-- our own objects (and every function in it has a deliberate ACL).
create extension if not exists "uuid-ossp" with schema public;
create extension if not exists pgcrypto with schema public;

create schema atendeai;
comment on schema atendeai is 'AtendeAI platform: every table has row level security enabled and forced';

-- Functions are executable by PUBLIC by default. Turn that off for every
-- function the owner creates from now on; each function below also revokes
-- explicitly and grants EXECUTE only to the roles that need it.
alter default privileges revoke execute on functions from public;

-- The service role may look names up in the schema; table grants come later.
grant usage on schema atendeai to atendeai_app;
-- The definer role owns the SECURITY DEFINER lookups (0003): owning a function
-- in a schema requires CREATE on it, reading through it requires USAGE.
grant usage, create on schema atendeai to atendeai_definer;

-- The tenant of the current transaction, or NULL when none is set. NULL on a
-- fresh connection (the setting does not exist) and '' on a connection where an
-- earlier transaction set it: nullif() folds both into NULL, and
-- "clinic_id = NULL" is never true, so a missing context yields zero rows.
-- LANGUAGE sql + STABLE, no SET clause and a SQL-standard body: the planner
-- inlines it into the policies, so "clinic_id = <value>" can use the indexes.
create function atendeai.current_clinic_id()
returns uuid
language sql
stable
parallel safe
return nullif(pg_catalog.current_setting('atendeai.clinic_id', true), '')::pg_catalog.uuid;

-- Sets the request context for the current transaction only (is_local = true),
-- never for the session: a pooled connection must not carry one request's
-- tenant into the next request (DESIGN.md section 7, item 8).
create function atendeai.set_request_context(
    p_clinic_id uuid,
    p_user_id uuid default null,
    p_ip_address text default null,
    p_user_agent text default null,
    p_request_id text default null
)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Fail here, not later in the audit trigger, when the address is not an address.
    perform p_ip_address::inet;
    perform set_config('atendeai.clinic_id', coalesce(p_clinic_id::text, ''), true);
    perform set_config('atendeai.user_id', coalesce(p_user_id::text, ''), true);
    perform set_config('atendeai.ip_address', coalesce(p_ip_address, ''), true);
    perform set_config('atendeai.user_agent', coalesce(p_user_agent, ''), true);
    perform set_config('atendeai.request_id', coalesce(p_request_id, ''), true);
end;
$$;

revoke all on function atendeai.current_clinic_id() from public;
revoke all on function atendeai.set_request_context(uuid, uuid, text, text, text) from public;
-- The policies call current_clinic_id() with the caller's rights, so every role
-- that reads through them needs EXECUTE (the definer uses it in 0003).
grant execute on function atendeai.current_clinic_id() to atendeai_app, atendeai_definer;
grant execute on function atendeai.set_request_context(uuid, uuid, text, text, text) to atendeai_app;
