"""initial schema

Revision ID: 0001
Revises: 
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('node',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('address', sa.String(length=253), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(length=32), nullable=False),
    sa.Column('key_path', sa.String(length=4096), nullable=True),
    sa.Column('labels_json', sa.String(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('hostkey_mismatch', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_scan_at', sa.DateTime(), nullable=True),
    sa.Column('last_snapshot_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_name'), ['name'], unique=True)
        batch_op.create_index(batch_op.f('ix_node_sku'), ['sku'], unique=False)
        batch_op.create_index(batch_op.f('ix_node_state'), ['state'], unique=False)

    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('args_json', sa.String(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('summary_json', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_kind'), ['kind'], unique=False)

    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(), nullable=True),
    sa.Column('to_state', sa.String(), nullable=True),
    sa.Column('severity', sa.String(), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_node_id'), ['node_id'], unique=False)

    op.create_table('hardwaresnapshot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('taken_at', sa.DateTime(), nullable=False),
    sa.Column('hostname', sa.String(), nullable=True),
    sa.Column('os_name', sa.String(), nullable=True),
    sa.Column('kernel', sa.String(), nullable=True),
    sa.Column('system_vendor', sa.String(), nullable=True),
    sa.Column('system_product', sa.String(), nullable=True),
    sa.Column('system_serial', sa.String(), nullable=True),
    sa.Column('cpu_model', sa.String(), nullable=True),
    sa.Column('cpu_sockets', sa.Integer(), nullable=True),
    sa.Column('cpu_cores', sa.Integer(), nullable=True),
    sa.Column('memory_bytes', sa.Integer(), nullable=True),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('pci_gpu_count', sa.Integer(), nullable=False),
    sa.Column('driver_version', sa.String(), nullable=True),
    sa.Column('cuda_version', sa.String(), nullable=True),
    sa.Column('nouveau_loaded', sa.Boolean(), nullable=False),
    sa.Column('secure_boot', sa.String(), nullable=True),
    sa.Column('facts_json', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hardwaresnapshot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hardwaresnapshot_node_id'), ['node_id'], unique=False)

    op.create_table('disk',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('model', sa.String(), nullable=True),
    sa.Column('serial', sa.String(), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=True),
    sa.Column('rotational', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['snapshot_id'], ['hardwaresnapshot.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_disk_snapshot_id'), ['snapshot_id'], unique=False)

    op.create_table('gpu',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(), nullable=True),
    sa.Column('serial', sa.String(), nullable=True),
    sa.Column('model', sa.String(), nullable=True),
    sa.Column('pci_bus_id', sa.String(), nullable=False),
    sa.Column('vbios', sa.String(), nullable=True),
    sa.Column('memory_mib', sa.Integer(), nullable=True),
    sa.Column('pcie_gen_current', sa.Integer(), nullable=True),
    sa.Column('pcie_gen_max', sa.Integer(), nullable=True),
    sa.Column('pcie_width_current', sa.Integer(), nullable=True),
    sa.Column('pcie_width_max', sa.Integer(), nullable=True),
    sa.Column('ecc_mode', sa.String(), nullable=True),
    sa.Column('mig_mode', sa.String(), nullable=True),
    sa.Column('retired_pages_sbe', sa.Integer(), nullable=True),
    sa.Column('retired_pages_dbe', sa.Integer(), nullable=True),
    sa.Column('retired_pages_pending', sa.Boolean(), nullable=True),
    sa.Column('remapped_rows_correctable', sa.Integer(), nullable=True),
    sa.Column('remapped_rows_uncorrectable', sa.Integer(), nullable=True),
    sa.Column('remapped_rows_pending', sa.Boolean(), nullable=True),
    sa.Column('remapped_rows_failure', sa.Boolean(), nullable=True),
    sa.Column('ecc_uncorrectable_volatile', sa.Integer(), nullable=True),
    sa.Column('ecc_uncorrectable_aggregate', sa.Integer(), nullable=True),
    sa.Column('temperature_c', sa.Integer(), nullable=True),
    sa.Column('power_limit_w', sa.Float(), nullable=True),
    sa.Column('driver_version', sa.String(), nullable=True),
    sa.Column('thermal_slowdown', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.ForeignKeyConstraint(['snapshot_id'], ['hardwaresnapshot.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gpu', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gpu_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gpu_snapshot_id'), ['snapshot_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gpu_uuid'), ['uuid'], unique=False)

    op.create_table('nic',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('mac', sa.String(), nullable=True),
    sa.Column('speed_mbps', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(), nullable=True),
    sa.Column('ib_device', sa.String(), nullable=True),
    sa.Column('ib_port', sa.Integer(), nullable=True),
    sa.Column('ib_rate_gbps', sa.Float(), nullable=True),
    sa.Column('ib_link_layer', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['snapshot_id'], ['hardwaresnapshot.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('nic', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nic_snapshot_id'), ['snapshot_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('nic', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nic_snapshot_id'))

    op.drop_table('nic')
    with op.batch_alter_table('gpu', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gpu_uuid'))
        batch_op.drop_index(batch_op.f('ix_gpu_snapshot_id'))
        batch_op.drop_index(batch_op.f('ix_gpu_node_id'))

    op.drop_table('gpu')
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_disk_snapshot_id'))

    op.drop_table('disk')
    with op.batch_alter_table('hardwaresnapshot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hardwaresnapshot_node_id'))

    op.drop_table('hardwaresnapshot')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_node_id'))

    op.drop_table('event')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_kind'))

    op.drop_table('run')
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_state'))
        batch_op.drop_index(batch_op.f('ix_node_sku'))
        batch_op.drop_index(batch_op.f('ix_node_name'))

    op.drop_table('node')
