"""byte counts are BIGINT (PostgreSQL's INTEGER stops at 2 GiB)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = {'hardwaresnapshot': 'memory_bytes', 'disk': 'size_bytes'}


def _alter(old: type, new: type) -> None:
    # SQLite's INTEGER already holds 64 bits; rebuilding tables there for a type name
    # would trip over the foreign keys of existing rows.
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=old(), type_=new(),
                                  existing_nullable=True)


def upgrade() -> None:
    _alter(sa.Integer, sa.BigInteger)


def downgrade() -> None:
    _alter(sa.BigInteger, sa.Integer)
