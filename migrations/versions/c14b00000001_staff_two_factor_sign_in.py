"""staff two-factor sign-in (TOTP): per-user encrypted secret, enabled flag, last accepted time step and sign-in
challenge; one-time recovery codes stored as keyed hashes. The "staff 2FA mandatory" switch is a platform_setting
row (none needed: absent means the STAFF_2FA_REQUIRED default).

Revision ID: c14b00000001
Revises: f3bd53037f90
Create Date: 2026-12-04 23:08:06.012190

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c14b00000001'
down_revision = 'f3bd53037f90'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('staff_two_factor',
    sa.Column('user_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('secret_enc', sa.Text(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('enabled_at', sa.DateTime(), nullable=True),
    sa.Column('last_timecode', sa.BigInteger(), nullable=True),
    sa.Column('challenge_id', sa.String(length=64), nullable=True),
    sa.Column('challenge_expires_at', sa.DateTime(), nullable=True),
    sa.Column('challenge_failures', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['ab_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id')
    )
    op.create_table('staff_recovery_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['staff_two_factor.user_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code_hash')
    )
    with op.batch_alter_table('staff_recovery_code', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_recovery_code_user_id'), ['user_id'], unique=False)



def downgrade():
    with op.batch_alter_table('staff_recovery_code', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_recovery_code_user_id'))

    op.drop_table('staff_recovery_code')
    op.drop_table('staff_two_factor')
