-- 0005: business counts for monitoring, without weakening row level security.
--
-- The business gauges (clinics, users, active sessions) count rows of every
-- tenant, which no tenant-scoped role can see. Instead of a policy exception,
-- one SECURITY DEFINER function (owner atendeai_definer, like the login
-- lookup) returns only aggregate counts, never a row, an id or a name. It
-- lives in a schema of its own, so a monitoring role gets USAGE on that
-- schema and nothing in schema atendeai.
--
-- Who may call it: members of the predefined role pg_monitor (the PostgreSQL
-- exporter connects as such a member, atendeai_monitor, created by whoever
-- bootstraps the cluster: harness/providers/exporters.py locally,
-- compose/postgres/initdb/10-monitoring-role.sh in Docker). The service role
-- atendeai_app gets nothing here: its grants are those of 0003.

create schema atendeai_monitoring;
comment on schema atendeai_monitoring is
    'AtendeAI monitoring: aggregate counts for the PostgreSQL exporter, no rows';

-- Owning a function in a schema needs CREATE there; reading through it, USAGE.
grant usage, create on schema atendeai_monitoring to atendeai_definer;
grant usage on schema atendeai_monitoring to pg_monitor;

-- The definer may read only the columns the counts group or filter on.
grant select (status) on atendeai.clinics to atendeai_definer;
grant select (role, status) on atendeai.users to atendeai_definer;
grant select (used_at, revoked_at, expires_at) on atendeai.sessions to atendeai_definer;

-- subject 'clinics' (by status), 'users' (by role and status), 'sessions'
-- (refresh tokens still usable: neither used, revoked nor expired).
create function atendeai_monitoring.business_counts()
returns table (subject text, status text, role text, total bigint)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
begin atomic
    select 'clinics', c.status, '', pg_catalog.count(*)
      from atendeai.clinics as c
     group by c.status
    union all
    select 'users', u.status, u.role, pg_catalog.count(*)
      from atendeai.users as u
     group by u.status, u.role
    union all
    select 'sessions', 'active', '', pg_catalog.count(*)
      from atendeai.sessions as s
     where s.used_at is null
       and s.revoked_at is null
       and s.expires_at > pg_catalog.now();
end;

revoke all on function atendeai_monitoring.business_counts() from public;
grant execute on function atendeai_monitoring.business_counts() to pg_monitor;
alter function atendeai_monitoring.business_counts() owner to atendeai_definer;

-- The exporter must be able to connect (migrate.bootstrap revokes CONNECT from
-- PUBLIC); the database owner may grant it.
do $$
begin
    execute pg_catalog.format(
        'grant connect on database %I to pg_monitor', pg_catalog.current_database()
    );
end;
$$;
