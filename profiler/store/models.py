"""SQLAlchemy 2.0 models of a wattlens database. Only :mod:`wattlens.profiler.store` uses them.

Every change here needs an Alembic revision in ``migrations/versions/`` (``python -m
wattlens.profiler.store.migrations new "what changed"`` writes it); tests/test_store_migrations.py
fails while the revisions and these models differ.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The head Alembic revision (migrations/versions/): a database stamped with it is opened without
#: importing Alembic; any other is upgraded on open.
SCHEMA_REVISION = "0005_bigint_row_ids"
#: ``meta.schema_version``, kept in step with the revision for wattlens versions from before
#: Alembic, which refuse a larger number: bump it with a revision those versions could not use.
#: 1: baseline; 2: gpu_idle; 3: rank columns (steps.rank/local_rank/world_size, layer_costs.rank)
#: and actions.source_session_id.
SCHEMA_VERSION = 3
APP_ID = "wattlens"
# Column types hold on SQLite and PostgreSQL alike: monotonic ns, FLOPs and parameter counts are
# BIGINT (they pass 2^31; SQLite stores any integer, a PostgreSQL INTEGER would overflow).
# The row ids of the high-volume tables (samples, layer_costs, steps, events) are BIGINT on a
# server, where a shared store passes 2^31 rows, and INTEGER on SQLite: its rowid alias.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # attach | run | sweep | optimize | demo
    status: Mapped[str] = mapped_column(String(20))  # running | completed | stopped | target-exited | interrupted | failed
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_cmdline: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    host: Mapped[str] = mapped_column(String(200))
    hardware_json: Mapped[str] = mapped_column(Text, default="{}")
    settings_json: Mapped[str] = mapped_column(Text, default="{}")
    started_at: Mapped[float] = mapped_column(Float)  # unix time, the session's wall-clock anchor
    start_ns: Mapped[int] = mapped_column(BigInteger)  # monotonic ns at started_at
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    interval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    profiler_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    profiler_create_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    summary_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # cache, recomputable


class SourceRow(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10))
    method: Mapped[str] = mapped_column(String(20))
    label: Mapped[str] = mapped_column(Text)
    details_json: Mapped[str] = mapped_column(Text, default="{}")


class SeriesRow(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(10))
    method: Mapped[str] = mapped_column(Text)
    source_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    label: Mapped[str] = mapped_column(Text, default="")


class SampleRow(Base):
    __tablename__ = "samples"
    # BIGINT on a server (a shared store passes 2^31 samples); INTEGER on SQLite: its rowid alias
    rowid: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    t_ns: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_samples_series_t", "series_id", "t_ns"),)


class LayerCostRow(Base):
    __tablename__ = "layer_costs"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    window_start_ns: Mapped[int] = mapped_column(BigInteger)
    window_end_ns: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    granularity: Mapped[str] = mapped_column(String(10))
    method: Mapped[str] = mapped_column(String(30))
    phase: Mapped[str] = mapped_column(String(10), default="forward")
    time_s: Mapped[float] = mapped_column(Float)
    share: Mapped[float] = mapped_column(Float)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    self_time_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    self_energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    flops: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split_se_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class StepRow(Base):
    __tablename__ = "steps"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    t_start_ns: Mapped[int] = mapped_column(BigInteger)
    t_end_ns: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    local_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    world_size: Mapped[int | None] = mapped_column(Integer, nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    t_ns: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    data_json: Mapped[str] = mapped_column(Text, default="{}")


class RecommendationRow(Base):
    __tablename__ = "recommendations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(String(80))
    title: Mapped[str] = mapped_column(Text)
    payload_json: Mapped[str] = mapped_column(Text)


class ActionRow(Base):
    __tablename__ = "actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20))  # applied | verified | reverted | failed | refused
    params_json: Mapped[str] = mapped_column(Text, default="{}")
    result_json: Mapped[str] = mapped_column(Text, default="{}")
    #: the session whose recommendation this action applied (``optimize --from-session``); not a
    #: foreign key, so deleting that session keeps the optimize session's record (version 3)
    source_session_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class MeasurementRow(Base):
    """One measured operating point (batch-size sweep row or A/B result): regression input."""

    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(20))  # batch-sweep | ab
    model_key: Mapped[str] = mapped_column(Text)
    action: Mapped[str | None] = mapped_column(String(80), nullable=True)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    throughput_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    saving_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    flops: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    payload_json: Mapped[str] = mapped_column(Text, default="{}")


class GpuIdleRow(Base):
    """A GPU's idle power, measured over a stretch with no GPU process, remembered across sessions
    so a session that attaches to an already busy GPU still has a measured idle figure."""

    __tablename__ = "gpu_idle"
    gpu_key: Mapped[str] = mapped_column(String(200), primary_key=True)  # NVML UUID (or name + index)
    idle_power_w: Mapped[float] = mapped_column(Float)
    stretch_s: Mapped[float] = mapped_column(Float)  # length of the stretch it was measured over
    measured_at: Mapped[float] = mapped_column(Float)  # wall clock (s since the epoch)
