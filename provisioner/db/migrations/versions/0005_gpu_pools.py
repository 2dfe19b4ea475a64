"""team GPU pools and their allocations

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pool',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('pool', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_name'), ['name'], unique=True)

    op.create_table('poolallocation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('first_gpu', sa.Integer(), nullable=False),
    sa.Column('assigned_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['pool_id'], ['pool.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('poolallocation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_poolallocation_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_poolallocation_pool_id'), ['pool_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('poolallocation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_poolallocation_pool_id'))
        batch_op.drop_index(batch_op.f('ix_poolallocation_node_id'))
    op.drop_table('poolallocation')
    with op.batch_alter_table('pool', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_name'))
    op.drop_table('pool')
