"""provision task results and node locks

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nodelock',
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=256), nullable=False),
    sa.Column('acquired_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('node_id')
    )
    op.create_table('taskresult',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('taskresult', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_taskresult_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_taskresult_run_id'), ['run_id'], unique=False)

    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vars_json', sa.String(), nullable=False, server_default='{}'))



def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('vars_json')

    with op.batch_alter_table('taskresult', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_taskresult_run_id'))
        batch_op.drop_index(batch_op.f('ix_taskresult_node_id'))

    op.drop_table('taskresult')
    op.drop_table('nodelock')
