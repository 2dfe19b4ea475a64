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


def upgrade() -> None:
    # SQLite's INTEGER already holds 64 bits; rebuilding tables there for a type name
    # would trip over the foreign keys of existing rows.
    if op.get_bind().dialect.name == 'sqlite':
        return
    with op.batch_alter_table('hardwaresnapshot', schema=None) as batch_op:
        batch_op.alter_column('memory_bytes', existing_type=sa.Integer(),
                              type_=sa.BigInteger(), existing_nullable=True)
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.alter_column('size_bytes', existing_type=sa.Integer(),
                              type_=sa.BigInteger(), existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.alter_column('size_bytes', existing_type=sa.BigInteger(),
                              type_=sa.Integer(), existing_nullable=True)
    with op.batch_alter_table('hardwaresnapshot', schema=None) as batch_op:
        batch_op.alter_column('memory_bytes', existing_type=sa.BigInteger(),
                              type_=sa.Integer(), existing_nullable=True)
