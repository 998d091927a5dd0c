-- 0003: row level security, the grants to the service role and the two
-- SECURITY DEFINER lookups.

-- ENABLE turns RLS on for everyone but the owner; FORCE applies it to the
-- owner too, so atendeai_owner (migrations, seeding) also needs a tenant
-- context and a mistaken "connect as owner" does not silently bypass isolation.
alter table atendeai.clinics enable row level security, force row level security;
alter table atendeai.users enable row level security, force row level security;
alter table atendeai.sessions enable row level security, force row level security;
alter table atendeai.audit_logs enable row level security, force row level security;

-- Two policies per table, same predicate:
--   tenant_isolation (permissive): grants access to the context's rows;
--   tenant_guard (restrictive): ANDed with whatever permissive policies exist,
--     so a permissive policy added later (a stray USING (true)) cannot widen
--     access beyond the tenant (DESIGN.md 7.6).
-- USING filters what is read, updated and deleted; WITH CHECK refuses new or
-- changed rows outside the tenant (inserting into or moving to another clinic).
create policy tenant_isolation on atendeai.clinics as permissive for all to public
    using (id = atendeai.current_clinic_id())
    with check (id = atendeai.current_clinic_id());
create policy tenant_guard on atendeai.clinics as restrictive for all to public
    using (id = atendeai.current_clinic_id())
    with check (id = atendeai.current_clinic_id());

create policy tenant_isolation on atendeai.users as permissive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());
create policy tenant_guard on atendeai.users as restrictive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());

create policy tenant_isolation on atendeai.sessions as permissive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());
create policy tenant_guard on atendeai.sessions as restrictive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());

create policy tenant_isolation on atendeai.audit_logs as permissive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());
create policy tenant_guard on atendeai.audit_logs as restrictive for all to public
    using (clinic_id = atendeai.current_clinic_id())
    with check (clinic_id = atendeai.current_clinic_id());

-- The service role gets exactly what the services use. Never TRUNCATE,
-- REFERENCES or TRIGGER: those act outside row level security (DESIGN.md 7.11).
-- Clinics are never deleted by the services.
grant select, insert, update on atendeai.clinics to atendeai_app;
-- password_hash is write-only for the service role: it is read only through
-- find_user_for_login, the one place that needs it.
grant select (id, clinic_id, name, email, role, status, last_login, created_at, updated_at)
    on atendeai.users to atendeai_app;
grant insert, update, delete on atendeai.users to atendeai_app;
grant select, insert, update, delete on atendeai.sessions to atendeai_app;
-- Append only: the audit trail cannot be edited or erased by the services.
grant select, insert on atendeai.audit_logs to atendeai_app;

-- The definer reads only the columns its two functions return or filter on.
grant select (id, clinic_id, email, name, password_hash, role, status)
    on atendeai.users to atendeai_definer;
grant select (id, name, status, created_at) on atendeai.clinics to atendeai_definer;

-- Login: the one query made before the tenant is known. SECURITY DEFINER as
-- atendeai_definer (BYPASSRLS, owns nothing else); search_path pinned and every
-- name qualified, so the caller cannot substitute objects (DESIGN.md 7.4). It
-- takes only an email, never a clinic id, and returns at most one row.
create function atendeai.find_user_for_login(p_email text)
returns table (
    id uuid,
    clinic_id uuid,
    email text,
    name text,
    password_hash text,
    role text,
    status text,
    clinic_status text
)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
begin atomic
    select u.id, u.clinic_id, u.email, u.name, u.password_hash, u.role, u.status,
           c.status
      from atendeai.users as u
      join atendeai.clinics as c on c.id = u.clinic_id
     where pg_catalog.lower(u.email) = pg_catalog.lower(p_email);
end;

-- GET /clinics for platform admins: lists every clinic, so it checks itself
-- that the request context is an active platform_admin of the context's clinic
-- rather than trusting the route alone.
create function atendeai.platform_list_clinics(p_limit integer, p_offset integer)
returns table (id uuid, name text, status text, created_at timestamptz)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    if not exists (
        select 1
          from atendeai.users as u
         where u.id = nullif(current_setting('atendeai.user_id', true), '')::uuid
           and u.clinic_id = atendeai.current_clinic_id()
           and u.role = 'platform_admin'
           and u.status = 'active'
    ) then
        raise exception 'platform_list_clinics: the request context is not an active platform_admin'
            using errcode = 'insufficient_privilege';
    end if;
    return query
        select c.id, c.name, c.status, c.created_at
          from atendeai.clinics as c
         order by c.created_at, c.id
         limit least(greatest(coalesce(p_limit, 50), 0), 1000)
        offset greatest(coalesce(p_offset, 0), 0);
end;
$$;

revoke all on function atendeai.find_user_for_login(text) from public;
revoke all on function atendeai.platform_list_clinics(integer, integer) from public;
grant execute on function atendeai.find_user_for_login(text) to atendeai_app;
grant execute on function atendeai.platform_list_clinics(integer, integer) to atendeai_app;

-- Hand them to the definer last (the owner may: it is a member of that role).
alter function atendeai.find_user_for_login(text) owner to atendeai_definer;
alter function atendeai.platform_list_clinics(integer, integer) owner to atendeai_definer;
