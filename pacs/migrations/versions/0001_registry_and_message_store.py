"""registry and message store

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 20:31:23.746290
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import pacs.db

from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('peer', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sending_application', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sending_facility', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('receiving_application', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('receiving_facility', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('control_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('message_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('charset', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('mapped', sa.JSON(), nullable=True),
    sa.Column('applied', sa.JSON(), nullable=True),
    sa.Column('ack_code', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('response', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('accession_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reprocess_of', sa.Integer(), nullable=True),
    sa.Column('processed_at', pacs.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_message_type'), ['message_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_received_at'), ['received_at'], unique=False)
        batch_op.create_index('ix_message_sender_control', ['sending_application', 'sending_facility', 'control_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_status'), ['status'], unique=False)

    op.create_table('patient',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('issuer', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('family_name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('given_name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name_alphabetic', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name_ideographic', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name_phonetic', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name_override', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('sex', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('national_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('merged_into', sa.Integer(), nullable=True),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['merged_into'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_merged_into'), ['merged_into'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_name_alphabetic'), ['name_alphabetic'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_name_ideographic'), ['name_ideographic'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_patient_id'), ['patient_id'], unique=False)

    op.create_table('patient_identifier',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient', sa.Integer(), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('authority', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('type_code', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['patient'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('value', 'authority', name='uq_identifier_value_authority')
    )
    with op.batch_alter_table('patient_identifier', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_identifier_patient'), ['patient'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_identifier_value'), ['value'], unique=False)

    op.create_table('visit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient', sa.Integer(), nullable=False),
    sa.Column('visit_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('patient_class', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('ward', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('room', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('bed', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attending_doctor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('admitted_at', sa.DateTime(), nullable=True),
    sa.Column('discharged_at', sa.DateTime(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('visit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_visit_patient'), ['patient'], unique=False)
        batch_op.create_index(batch_op.f('ix_visit_visit_number'), ['visit_number'], unique=False)

    op.create_table('imaging_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient', sa.Integer(), nullable=False),
    sa.Column('visit', sa.Integer(), nullable=True),
    sa.Column('placer_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('placer_authority', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('filler_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('accession_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('requested_procedure_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('procedure_code', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('procedure_scheme', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('procedure_text', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('body_part', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('priority', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('referring_physician', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('requesting_physician', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('department', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('study_instance_uid', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source_message', sa.Integer(), nullable=True),
    sa.Column('created_at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', pacs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient'], ['patient.id'], ),
    sa.ForeignKeyConstraint(['visit'], ['visit.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('imaging_order', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imaging_order_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_order_filler_number'), ['filler_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_order_patient'), ['patient'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_order_status'), ['status'], unique=False)
        batch_op.create_index('ix_order_placer', ['placer_number', 'placer_authority'], unique=False)

    op.create_table('procedure_step',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order', sa.Integer(), nullable=False),
    sa.Column('sps_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('modality', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('station_ae_title', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('station_name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('location', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('start', sa.DateTime(), nullable=True),
    sa.Column('duration_minutes', sa.Integer(), nullable=True),
    sa.Column('protocol_code', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('protocol_scheme', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('protocol_text', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('performing_physician', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['order'], ['imaging_order.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('procedure_step', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_step_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_procedure_step_order'), ['order'], unique=False)
        batch_op.create_index(batch_op.f('ix_procedure_step_station_ae_title'), ['station_ae_title'], unique=False)
        batch_op.create_index('ix_step_status_start', ['status', 'start'], unique=False)

    op.create_table('order_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('from_status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('to_status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('at', pacs.db.UTCDateTime(), nullable=False),
    sa.Column('by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['order'], ['imaging_order.id'], ),
    sa.ForeignKeyConstraint(['step'], ['procedure_step.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('order_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_event_order'), ['order'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('order_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_event_order'))

    op.drop_table('order_event')
    with op.batch_alter_table('procedure_step', schema=None) as batch_op:
        batch_op.drop_index('ix_step_status_start')
        batch_op.drop_index(batch_op.f('ix_procedure_step_station_ae_title'))
        batch_op.drop_index(batch_op.f('ix_procedure_step_order'))
        batch_op.drop_index(batch_op.f('ix_procedure_step_modality'))

    op.drop_table('procedure_step')
    with op.batch_alter_table('imaging_order', schema=None) as batch_op:
        batch_op.drop_index('ix_order_placer')
        batch_op.drop_index(batch_op.f('ix_imaging_order_status'))
        batch_op.drop_index(batch_op.f('ix_imaging_order_patient'))
        batch_op.drop_index(batch_op.f('ix_imaging_order_filler_number'))
        batch_op.drop_index(batch_op.f('ix_imaging_order_accession_number'))

    op.drop_table('imaging_order')
    with op.batch_alter_table('visit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_visit_visit_number'))
        batch_op.drop_index(batch_op.f('ix_visit_patient'))

    op.drop_table('visit')
    with op.batch_alter_table('patient_identifier', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_identifier_value'))
        batch_op.drop_index(batch_op.f('ix_patient_identifier_patient'))

    op.drop_table('patient_identifier')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_patient_id'))
        batch_op.drop_index(batch_op.f('ix_patient_name_ideographic'))
        batch_op.drop_index(batch_op.f('ix_patient_name_alphabetic'))
        batch_op.drop_index(batch_op.f('ix_patient_merged_into'))

    op.drop_table('patient')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_status'))
        batch_op.drop_index('ix_message_sender_control')
        batch_op.drop_index(batch_op.f('ix_message_received_at'))
        batch_op.drop_index(batch_op.f('ix_message_patient_id'))
        batch_op.drop_index(batch_op.f('ix_message_message_type'))

    op.drop_table('message')
