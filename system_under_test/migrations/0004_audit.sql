-- 0004: the audit trail of clinics and users, written by a trigger.
--
-- SECURITY INVOKER: the audit row is inserted with the rights and the row level
-- security of whoever changed the data, so it is written for the *context's*
-- clinic and passes audit_logs' WITH CHECK like any other insert (DESIGN.md
-- 7.12). A definer-rights trigger could write any clinic's trail.
create function atendeai.audit_row_change()
returns trigger
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb;
    v_new jsonb;
    v_row jsonb;
    v_clinic_id uuid;
begin
    if tg_op in ('UPDATE', 'DELETE') then
        v_old := to_jsonb(old);
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        v_new := to_jsonb(new);
    end if;

    -- A login stamping last_login (and updated_at) is not an edit worth a row.
    if tg_op = 'UPDATE'
       and (v_old - 'last_login' - 'updated_at') = (v_new - 'last_login' - 'updated_at') then
        return null;
    end if;

    v_row := coalesce(v_new, v_old);
    -- The context's clinic. Without a context only a role that bypasses row
    -- level security (a superuser doing maintenance) can get here: then the
    -- changed row's own clinic is the best answer.
    v_clinic_id := coalesce(
        atendeai.current_clinic_id(),
        (case when tg_table_name = 'clinics' then v_row ->> 'id'
              else v_row ->> 'clinic_id' end)::uuid
    );

    -- A clinic's trail is deleted with it (ON DELETE CASCADE), so the deletion
    -- of a clinic, and of its users along with it, cannot be recorded there.
    if tg_op = 'DELETE'
       and not exists (select 1 from atendeai.clinics as c where c.id = v_clinic_id) then
        return null;
    end if;

    insert into atendeai.audit_logs (
        clinic_id, user_id, action, table_name, record_id, old_values, new_values,
        ip_address, user_agent, request_id
    ) values (
        v_clinic_id,
        nullif(current_setting('atendeai.user_id', true), '')::uuid,
        lower(tg_op),
        tg_table_name,
        v_row ->> 'id',
        -- Password hashes never reach the audit trail.
        v_old - 'password_hash',
        v_new - 'password_hash',
        nullif(current_setting('atendeai.ip_address', true), '')::inet,
        nullif(current_setting('atendeai.user_agent', true), ''),
        nullif(current_setting('atendeai.request_id', true), '')
    );
    return null;
end;
$$;

-- Trigger functions are not checked for EXECUTE when they fire: nobody needs it.
revoke all on function atendeai.audit_row_change() from public;

create trigger clinics_audit
    after insert or update or delete on atendeai.clinics
    for each row execute function atendeai.audit_row_change();

create trigger users_audit
    after insert or update or delete on atendeai.users
    for each row execute function atendeai.audit_row_change();
