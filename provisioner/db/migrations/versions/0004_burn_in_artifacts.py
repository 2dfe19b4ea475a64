"""burn-in artifacts (telemetry, NVLink, health snapshots, DCGM output)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('burninartifact',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('content_json', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('burninartifact', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_burninartifact_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_burninartifact_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('burninartifact', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_burninartifact_run_id'))
        batch_op.drop_index(batch_op.f('ix_burninartifact_node_id'))
    op.drop_table('burninartifact')
