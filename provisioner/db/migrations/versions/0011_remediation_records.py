"""remediation records: one per node and fault, with their events

``gpuctl monitor --remediate`` and ``gpuctl remediate`` record each node's way from
quarantine through drain, the ladder's rungs and re-certification to service or RMA
(``provisioner.remediate.record``). The events keep who, what, when and the evidence
before and after; the attempts they hold are the history the policy's repeat window and
escalation read.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('remediation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('fault', sa.String(length=64), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('rung', sa.String(length=16), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], name='remediation_node_id_fkey',
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('remediation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_remediation_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_remediation_state'), ['state'], unique=False)

    op.create_table('remediationevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('remediation_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('from_state', sa.String(length=32), nullable=True),
    sa.Column('to_state', sa.String(length=32), nullable=False),
    sa.Column('rung', sa.String(length=16), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('message', sa.String(), nullable=False),
    sa.Column('evidence_before_json', sa.String(), nullable=False),
    sa.Column('evidence_after_json', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['remediation_id'], ['remediation.id'],
                            name='remediationevent_remediation_id_fkey',
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('remediationevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_remediationevent_remediation_id'),
                              ['remediation_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('remediationevent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_remediationevent_remediation_id'))
    op.drop_table('remediationevent')
    with op.batch_alter_table('remediation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_remediation_state'))
        batch_op.drop_index(batch_op.f('ix_remediation_node_id'))
    op.drop_table('remediation')
