-- A multi-tenant schema in the style of public RLS samples, NOT this platform's:
-- the tenant column is tenant_id, the tables live in public, the context is the
-- setting app.current_tenant read with current_setting() in the policies
-- themselves, the table of tenants is keyed by tenant_id, the tables are owned
-- by the superuser that created them and the application's role tenant_app
-- (created by the test; cluster-wide) owns nothing.
--
-- It is correct, so `atendeai lint-rls --schema public --app-role tenant_app
-- --tenant-column tenant_id` must pass it; test_sec_rls_lint.py plants
-- problems into copies of it and expects the lint to find each one.

create table public.tenants (
    tenant_id uuid primary key default gen_random_uuid(),
    name text not null,
    -- Unique across the platform, and rightly so: the table of tenants is not
    -- tenant-scoped (its slug is the tenant's public name).
    slug text not null unique
);

create table public.users (
    user_id uuid primary key default gen_random_uuid(),
    -- The tenant column IS the foreign key to the tenants.
    tenant_id uuid not null references public.tenants (tenant_id),
    email text not null,
    password_hash text not null,
    unique (tenant_id, email),
    unique (tenant_id, user_id)
);

create table public.projects (
    project_id bigint generated always as identity primary key,
    tenant_id uuid not null references public.tenants (tenant_id),
    owner_id uuid not null,
    name text not null,
    unique (tenant_id, name),
    foreign key (tenant_id, owner_id) references public.users (tenant_id, user_id)
);

create table public.audit_events (
    event_id bigint generated always as identity primary key,
    tenant_id uuid not null references public.tenants (tenant_id),
    actor text,
    operation text not null,
    table_name text not null,
    row_data jsonb,
    recorded_at timestamptz not null default now()
);

-- The request context, for the current transaction only.
create function public.set_tenant(p_tenant uuid, p_actor text) returns void
language plpgsql as $$
begin
    perform set_config('app.current_tenant', p_tenant::text, true);
    perform set_config('app.current_actor', p_actor, true);
end;
$$;

-- The audit trail: who did what, in the context's tenant.
create function public.record_change() returns trigger
language plpgsql as $$
begin
    insert into public.audit_events (tenant_id, actor, operation, table_name, row_data)
    values (
        current_setting('app.current_tenant')::uuid,
        current_setting('app.current_actor', true),
        tg_op,
        tg_table_name,
        to_jsonb(coalesce(new, old)) - 'password_hash'
    );
    return null;
end;
$$;

create trigger tenants_audit after insert or update or delete on public.tenants
    for each row execute function public.record_change();
create trigger users_audit after insert or update or delete on public.users
    for each row execute function public.record_change();
create trigger projects_audit after insert or update or delete on public.projects
    for each row execute function public.record_change();

alter table public.tenants enable row level security, force row level security;
alter table public.users enable row level security, force row level security;
alter table public.projects enable row level security, force row level security;
alter table public.audit_events enable row level security, force row level security;

-- The samples' policy: FOR ALL with USING only (PostgreSQL checks written rows
-- with it), plus a restrictive guard so a later permissive policy cannot widen it.
create policy tenant_isolation on public.tenants to tenant_app
    using (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_guard on public.tenants as restrictive
    using (tenant_id = current_setting('app.current_tenant')::uuid)
    with check (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_isolation on public.users to tenant_app
    using (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_guard on public.users as restrictive
    using (tenant_id = current_setting('app.current_tenant')::uuid)
    with check (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_isolation on public.projects to tenant_app
    using (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_guard on public.projects as restrictive
    using (tenant_id = current_setting('app.current_tenant')::uuid)
    with check (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_isolation on public.audit_events to tenant_app
    using (tenant_id = current_setting('app.current_tenant')::uuid);
create policy tenant_guard on public.audit_events as restrictive
    using (tenant_id = current_setting('app.current_tenant')::uuid)
    with check (tenant_id = current_setting('app.current_tenant')::uuid);

grant select, insert, update on public.tenants to tenant_app;
-- password_hash is write-only for the application.
grant select (user_id, tenant_id, email), insert, update on public.users to tenant_app;
grant select, insert, update, delete on public.projects to tenant_app;
-- Append only.
grant select, insert on public.audit_events to tenant_app;
