-- 0002: the four tenant tables, their constraints and indexes, updated_at.

create table atendeai.clinics (
    id uuid primary key default pg_catalog.gen_random_uuid(),
    name text not null check (pg_catalog.btrim(name) <> ''),
    type text,
    specialty text,
    description text,
    mission text,
    "values" text,
    differentials text,
    address_street text,
    address_number text,
    address_complement text,
    address_neighborhood text,
    address_city text,
    address_state text,
    address_zipcode text,
    phone text,
    whatsapp text,
    email text,
    website text,
    department_emails jsonb not null default '{}',
    working_hours jsonb not null default '{}',
    ai_personality jsonb not null default '{}',
    ai_behavior jsonb not null default '{}',
    status text not null default 'active'
        check (status in ('active', 'inactive', 'suspended')),
    created_at timestamptz not null default pg_catalog.now(),
    updated_at timestamptz not null default pg_catalog.now()
);

create table atendeai.users (
    id uuid primary key default pg_catalog.gen_random_uuid(),
    clinic_id uuid not null references atendeai.clinics (id) on delete cascade,
    name text not null check (pg_catalog.btrim(name) <> ''),
    email text not null check (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    password_hash text not null check (password_hash <> ''),
    role text not null check (role in ('platform_admin', 'admin', 'manager', 'staff')),
    status text not null default 'active' check (status in ('active', 'inactive')),
    last_login timestamptz,
    created_at timestamptz not null default pg_catalog.now(),
    updated_at timestamptz not null default pg_catalog.now(),
    -- Target of the composite FKs below: a tenant row may only point at a user
    -- of its own clinic (FK checks run as the owner and skip RLS, DESIGN.md 7.10).
    constraint users_clinic_id_id_key unique (clinic_id, id)
);

-- One account per email across the platform: login looks users up by email
-- before the tenant is known (find_user_for_login).
create unique index users_email_lower_key on atendeai.users (pg_catalog.lower(email));
-- GET /users: one clinic's users, newest or oldest first, paginated.
create index users_clinic_id_created_at_idx on atendeai.users (clinic_id, created_at, id);

create table atendeai.sessions (
    id uuid primary key default pg_catalog.gen_random_uuid(),
    clinic_id uuid not null,
    user_id uuid not null,
    -- One family per login; every refresh adds a child (parent_id = the spent session).
    family_id uuid not null,
    parent_id uuid,
    token_hash text not null,            -- sha256 of the access token's jti
    refresh_token_hash text not null,    -- sha256 of the refresh token
    expires_at timestamptz not null,
    created_at timestamptz not null default pg_catalog.now(),
    used_at timestamptz,
    revoked_at timestamptz,
    revoked_reason text,
    ip_address inet,
    user_agent text,
    constraint sessions_clinic_id_id_key unique (clinic_id, id),
    -- clinic_id is part of both FKs, so a session can never reference a user or
    -- a parent session of another clinic.
    constraint sessions_user_fkey foreign key (clinic_id, user_id)
        references atendeai.users (clinic_id, id) on delete cascade,
    constraint sessions_parent_fkey foreign key (clinic_id, parent_id)
        references atendeai.sessions (clinic_id, id) on delete set null (parent_id)
);

create unique index sessions_refresh_token_hash_key on atendeai.sessions (refresh_token_hash);
create index sessions_family_id_idx on atendeai.sessions (family_id);
create index sessions_user_id_idx on atendeai.sessions (user_id);
create index sessions_token_hash_idx on atendeai.sessions (token_hash);
-- Deleting a session looks for its children (ON DELETE SET NULL).
create index sessions_parent_id_idx on atendeai.sessions (clinic_id, parent_id)
    where parent_id is not null;

create table atendeai.audit_logs (
    id uuid primary key default pg_catalog.gen_random_uuid(),
    clinic_id uuid not null references atendeai.clinics (id) on delete cascade,
    -- No FK: the actor may be a platform admin of another clinic, or deleted since.
    user_id uuid,
    action text not null check (action <> ''),
    table_name text,
    record_id text,
    old_values jsonb,
    new_values jsonb,
    ip_address inet,
    user_agent text,
    request_id text,
    created_at timestamptz not null default pg_catalog.now()
);

-- An audit trail is read per clinic, newest first.
create index audit_logs_clinic_id_created_at_idx
    on atendeai.audit_logs (clinic_id, created_at desc);

-- updated_at follows real changes; a login that only stamps last_login does not
-- count as an edit of the row.
create function atendeai.touch_updated_at()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if (to_jsonb(new) - 'last_login' - 'updated_at')
       is distinct from (to_jsonb(old) - 'last_login' - 'updated_at') then
        new.updated_at := now();
    end if;
    return new;
end;
$$;

-- Trigger functions are not checked for EXECUTE when they fire: nobody needs it.
revoke all on function atendeai.touch_updated_at() from public;

create trigger clinics_touch_updated_at
    before update on atendeai.clinics
    for each row execute function atendeai.touch_updated_at();

create trigger users_touch_updated_at
    before update on atendeai.users
    for each row execute function atendeai.touch_updated_at();
