"""timestamps are stored with their time zone (UTC) on PostgreSQL

The models hold timezone-aware UTC datetimes; on PostgreSQL the columns must be
TIMESTAMP WITH TIME ZONE or the server's time zone setting would shift them. SQLite has
no such type, so this changes nothing there.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

COLUMNS = {
    'node': [('created_at', False), ('last_scan_at', True)],
    'run': [('started_at', False), ('finished_at', True)],
    'hardwaresnapshot': [('taken_at', False)],
    'event': [('at', False)],
    'taskresult': [('at', False)],
    'nodelock': [('acquired_at', False)],
    'certificate': [('issued_at', False), ('expires_at', True)],
    'pool': [('created_at', False)],
    'poolallocation': [('assigned_at', False)],
}


def _alter(timezone: bool) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, nullable in columns:
                batch_op.alter_column(
                    name, existing_type=sa.DateTime(timezone=not timezone),
                    type_=sa.DateTime(timezone=timezone), existing_nullable=nullable,
                    postgresql_using=f"{name} AT TIME ZONE 'UTC'")


def upgrade() -> None:
    _alter(True)


def downgrade() -> None:
    _alter(False)
