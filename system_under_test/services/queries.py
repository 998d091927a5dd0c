"""SQL shared by more than one service. Columns are always named: the service
role may not read ``users.password_hash``."""

from __future__ import annotations

from system_under_test.schemas import CLINIC_COLUMNS

USER_COLUMNS = "id, clinic_id, name, email, role, status, last_login, created_at, updated_at"
SELECT_USER = f"SELECT {USER_COLUMNS} FROM atendeai.users WHERE id = %s"

CLINIC_SELECT_LIST = ", ".join(f'"{c}"' for c in CLINIC_COLUMNS)
SELECT_CLINIC = f"SELECT {CLINIC_SELECT_LIST} FROM atendeai.clinics WHERE id = %s"

INSERT_USER = f"""
INSERT INTO atendeai.users (clinic_id, name, email, password_hash, role)
VALUES (atendeai.current_clinic_id(), %(name)s, %(email)s, %(password_hash)s, %(role)s)
RETURNING {USER_COLUMNS}
"""
