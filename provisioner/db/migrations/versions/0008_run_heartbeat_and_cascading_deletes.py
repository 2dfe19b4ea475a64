"""runs record their control host, pid and heartbeat; deleting a node cascades

Crash recovery (``provisioner.runs``) needs to know where a run's process lives and when
it last showed a sign of life. Removing a node (or a pool, or a snapshot) now deletes
what belongs to it in the database itself (ON DELETE CASCADE) instead of a hand-written
list in the registry.

On SQLite a foreign key can only change by rebuilding its table; ``migrate`` runs
migrations with foreign keys off (as SQLite's documentation prescribes for schema
changes) and checks them afterwards. The unnamed constraints of 0001-0005 are found by a
naming convention equal to PostgreSQL's default names, so one set of operations serves
both databases.

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# PostgreSQL's default foreign key names; SQLite's unnamed ones are reflected under them.
CONVENTION = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}

# table -> (column, referred table) whose rows go with the referred row.
CASCADES = {
    'hardwaresnapshot': [('node_id', 'node')],
    'gpu': [('snapshot_id', 'hardwaresnapshot'), ('node_id', 'node')],
    'nic': [('snapshot_id', 'hardwaresnapshot')],
    'disk': [('snapshot_id', 'hardwaresnapshot')],
    'event': [('node_id', 'node')],
    'taskresult': [('node_id', 'node')],
    'nodelock': [('node_id', 'node')],
    'burninresult': [('node_id', 'node')],
    'certificate': [('node_id', 'node')],
    'burninartifact': [('node_id', 'node')],
    'poolallocation': [('pool_id', 'pool'), ('node_id', 'node')],
}


def _cascade(ondelete: str | None) -> None:
    for table, refs in CASCADES.items():
        with op.batch_alter_table(table, naming_convention=CONVENTION,
                                  recreate='auto') as batch_op:
            for column, referred in refs:
                name = f'{table}_{column}_fkey'
                batch_op.drop_constraint(name, type_='foreignkey')
                batch_op.create_foreign_key(name, referred, [column], ['id'],
                                            ondelete=ondelete)


def upgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=253), nullable=True))
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index('ix_run_status', ['status'], unique=False)
    _cascade('CASCADE')


def downgrade() -> None:
    _cascade(None)
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_status')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('pid')
        batch_op.drop_column('host')
