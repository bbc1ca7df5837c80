"""risk learning: labels (risk_label), model versions (risk_model, with the cache trigger so every process reloads
the live models when one is trained, promoted or retired), agent anomaly scores (risk_agent_anomaly), and the
models' scores on each decision (risk_decision.model)

Revision ID: c19m00000001
Revises: c19f00000001
Create Date: 2026-12-22 00:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c19m00000001'
down_revision = 'c19f00000001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('risk_label',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=80), nullable=False),
    sa.Column('decision_id', sa.BigInteger(), nullable=True),
    sa.Column('order_no', sa.String(length=40), nullable=True),
    sa.Column('label', sa.SmallInteger(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subject')
    )
    with op.batch_alter_table('risk_label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_risk_label_decision_id'), ['decision_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_risk_label_decided_at'), ['decided_at'], unique=False)

    op.create_table('risk_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('features', sa.Text(), nullable=False),
    sa.Column('metrics', sa.Text(), nullable=False),
    sa.Column('rules_metrics', sa.Text(), nullable=False),
    sa.Column('holdout', sa.Text(), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('booster', sa.Text(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('promoted_at', sa.DateTime(), nullable=True),
    sa.Column('promoted_by_id', sa.Integer(), nullable=True),
    sa.Column('retired_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['promoted_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )

    op.create_table('risk_agent_anomaly',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('flagged', sa.Boolean(), nullable=False),
    sa.Column('reasons', sa.Text(), nullable=False),
    sa.Column('cluster', sa.String(length=64), nullable=True),
    sa.Column('features', sa.Text(), nullable=False),
    sa.Column('computed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agent.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agent_id')
    )
    with op.batch_alter_table('risk_agent_anomaly', schema=None) as batch_op:
        batch_op.create_index('ix_risk_agent_anomaly_flagged', ['flagged', 'score'], unique=False)

    with op.batch_alter_table('risk_decision', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model', sa.Text(), nullable=True))

    if op.get_bind().dialect.name == "postgresql":
        # as migration c15b00000001 does for the other cached tables: a new, promoted or retired version moves the
        # cache version, so every process re-reads which models are live (and loads a new booster once)
        op.execute("CREATE CONSTRAINT TRIGGER kameng_cache_risk_model AFTER INSERT OR UPDATE OF status OR DELETE "
                   "ON risk_model DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION kameng_cache_bump()")
        op.execute("CREATE TRIGGER kameng_cache_risk_model_truncate AFTER TRUNCATE ON risk_model "
                   "FOR EACH STATEMENT EXECUTE FUNCTION kameng_cache_bump()")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS kameng_cache_risk_model ON risk_model")
        op.execute("DROP TRIGGER IF EXISTS kameng_cache_risk_model_truncate ON risk_model")
    with op.batch_alter_table('risk_decision', schema=None) as batch_op:
        batch_op.drop_column('model')
    with op.batch_alter_table('risk_agent_anomaly', schema=None) as batch_op:
        batch_op.drop_index('ix_risk_agent_anomaly_flagged')
    op.drop_table('risk_agent_anomaly')
    op.drop_table('risk_model')
    with op.batch_alter_table('risk_label', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_risk_label_decided_at'))
        batch_op.drop_index(batch_op.f('ix_risk_label_decision_id'))
    op.drop_table('risk_label')
