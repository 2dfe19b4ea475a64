"""who may use a pool: Slurm accounts and Unix groups

A pool's partition admits only these (slurm.conf(5) ``AllowAccounts``/``AllowGroups``);
both empty is a pool open to every user, which ``gpuctl pool create --open`` asks for
by name. Pools made before this revision are open, as they were.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pool', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accounts', sa.String(length=512), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('groups', sa.String(length=512), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('pool', schema=None) as batch_op:
        batch_op.drop_column('groups')
        batch_op.drop_column('accounts')
