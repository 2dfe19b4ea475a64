"""each node's BMC: its Redfish URL, user, password reference and CA bundle

``bmc_password_from`` is a reference (``env:VARIABLE`` or ``file:PATH``), never the
password: gpuctl reads the secret when it talks to the BMC and keeps it nowhere.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bmc_url', sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column('bmc_user', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('bmc_password_from', sa.String(length=4101),
                                      nullable=True))
        batch_op.add_column(sa.Column('bmc_ca', sa.String(length=4096), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('bmc_ca')
        batch_op.drop_column('bmc_password_from')
        batch_op.drop_column('bmc_user')
        batch_op.drop_column('bmc_url')
