-- 0006: an e-mail address is unique within its clinic; login names the clinic.
--
-- Until now an address was unique across the platform, so POST /users with an
-- address used in another clinic answered 409 email_taken: any clinic admin
-- could learn whether a person has an account at any other clinic (a
-- cross-tenant existence oracle, DESIGN.md 7.9), and a person working at two
-- clinics could not have an account at both. Now:
--   - users: unique (clinic_id, lower(email)) instead of unique (lower(email));
--   - clinics: a unique, URL-safe slug (the clinic's public login name);
--   - find_user_for_login(slug, email): still the one query made before the
--     tenant is known, still at most one row (both keys are unique).
--
-- Existing data: every clinic gets a slug made from its name (lower case,
-- accents dropped, runs of other characters turned into one dash); when two
-- names give the same slug, the later clinics get the first 8 hex digits of
-- their id appended. Every e-mail that was unique across the platform is
-- unique within its clinic, so the new index cannot fail. Each slug assigned
-- is recorded in that clinic's audit trail (the audit trigger runs under the
-- clinic's own request context).

-- A clinic inserted without a slug (plain SQL, fixtures) gets a random one.
alter table atendeai.clinics
    add column slug text
        default ('clinic-' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''));

-- The backfill must see every clinic: the owner is subject to FORCE ROW LEVEL
-- SECURITY, so it is lifted for this transaction only and restored below.
alter table atendeai.clinics no force row level security;

do $$
declare
    v_clinic record;
begin
    for v_clinic in
        with base as (
            select c.id,
                   coalesce(nullif(pg_catalog.btrim(pg_catalog.regexp_replace(
                       pg_catalog.translate(pg_catalog.lower(c.name),
                           'áàâãäåéèêëíìîïóòôõöúùûüçñý', 'aaaaaaeeeeiiiiooooouuuucny'),
                       '[^a-z0-9]+', '-', 'g'), '-'), ''), 'clinic') as slug,
                   c.created_at
              from atendeai.clinics as c
        )
        select b.id,
               case when pg_catalog.row_number() over (
                             partition by b.slug order by b.created_at, b.id) = 1
                    then pg_catalog.btrim(pg_catalog.left(b.slug, 54), '-')
                    else pg_catalog.btrim(pg_catalog.left(b.slug, 45), '-') || '-'
                         || pg_catalog.left(pg_catalog.replace(b.id::text, '-', ''), 8)
               end as slug
          from base as b
    loop
        perform atendeai.set_request_context(v_clinic.id);
        update atendeai.clinics set slug = v_clinic.slug
         where id = v_clinic.id;
    end loop;
    perform atendeai.set_request_context(null);
end;
$$;

alter table atendeai.clinics force row level security;

alter table atendeai.clinics
    alter column slug set not null,
    add constraint clinics_slug_format check (
        slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' and pg_catalog.length(slug) <= 63
    ),
    add constraint clinics_slug_key unique (slug);

-- One account per e-mail address within a clinic (login names the clinic).
create unique index users_clinic_id_email_lower_key
    on atendeai.users (clinic_id, pg_catalog.lower(email));
drop index atendeai.users_email_lower_key;

-- The slug is a column of the service role's clinics (grant select on the
-- table in 0003); the definer reads it for the login lookup only.
grant select (slug) on atendeai.clinics to atendeai_definer;

drop function atendeai.find_user_for_login(text);

-- Login: the one query made before the tenant is known. SECURITY DEFINER as
-- atendeai_definer (BYPASSRLS, owns nothing else); search_path pinned and every
-- name qualified (DESIGN.md 7.4). It takes a clinic slug and an e-mail, never a
-- clinic id, and returns at most one row: slug and (clinic, e-mail) are unique.
create function atendeai.find_user_for_login(p_clinic_slug text, p_email text)
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
      from atendeai.clinics as c
      join atendeai.users as u on u.clinic_id = c.id
     where c.slug = pg_catalog.lower(p_clinic_slug)
       and pg_catalog.lower(u.email) = pg_catalog.lower(p_email);
end;

revoke all on function atendeai.find_user_for_login(text, text) from public;
grant execute on function atendeai.find_user_for_login(text, text) to atendeai_app;
alter function atendeai.find_user_for_login(text, text) owner to atendeai_definer;
