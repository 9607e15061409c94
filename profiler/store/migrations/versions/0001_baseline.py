"""Baseline: the schema of wattlens database version 1 (meta, sessions and their records).

Frozen: a revision never imports models.py (the models move on; what a revision did must not).
Integer columns holding monotonic ns, FLOPs or parameter counts are BIGINT, as a PostgreSQL
database was first created (an SQLite file of version 1 declared them INTEGER: the same storage
class on SQLite, so such a file needs no change).
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def _session_fk() -> sa.ForeignKey:
    return sa.ForeignKey("sessions.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("target_pid", sa.Integer(), nullable=True),
        sa.Column("target_cmdline", sa.Text(), nullable=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("hardware_json", sa.Text(), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("interval_s", sa.Float(), nullable=True),
        sa.Column("profiler_pid", sa.Integer(), nullable=True),
        sa.Column("profiler_create_time", sa.Float(), nullable=True),
        sa.Column("summary_json", sa.Text(), nullable=True),
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("unit", sa.String(10), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
    )
    op.create_table(
        "samples",
        # BIGINT on a server; INTEGER on SQLite, where only INTEGER PRIMARY KEY aliases the rowid
        sa.Column("rowid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("series_id", sa.Integer(), sa.ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
        sa.Column("t_ns", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_index("ix_samples_series_t", "samples", ["series_id", "t_ns"])
    op.create_table(
        "layer_costs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("window_start_ns", sa.BigInteger(), nullable=False),
        sa.Column("window_end_ns", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("granularity", sa.String(10), nullable=False),
        sa.Column("method", sa.String(30), nullable=False),
        sa.Column("phase", sa.String(10), nullable=False),
        sa.Column("time_s", sa.Float(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("self_time_s", sa.Float(), nullable=True),
        sa.Column("self_energy_j", sa.Float(), nullable=True),
        sa.Column("n_samples", sa.Integer(), nullable=True),
        sa.Column("flops", sa.BigInteger(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("t_start_ns", sa.BigInteger(), nullable=False),
        sa.Column("t_end_ns", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("energy_j", sa.Float(), nullable=True),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("t_ns", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "recommendations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("rule", sa.String(80), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(80), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), _session_fk(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("model_key", sa.Text(), nullable=False),
        sa.Column("action", sa.String(80), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("energy_per_sample_j", sa.Float(), nullable=True),
        sa.Column("throughput_per_s", sa.Float(), nullable=True),
        sa.Column("saving_fraction", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("flops", sa.BigInteger(), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    for table in ("sources", "series", "layer_costs", "steps", "events", "recommendations", "actions",
                  "measurements"):
        op.create_index(f"ix_{table}_session_id", table, ["session_id"])


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
