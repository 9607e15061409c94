"""Version 3: rank columns (steps.rank/local_rank/world_size, layer_costs.rank) and
actions.source_session_id (the session whose recommendation an action applied; not a foreign key).

Two branches each called their schema 3 before wattlens used Alembic, one adding the rank columns,
the other the action link; a file stamped only ``schema_version = 3`` is therefore mapped to the
revision before this one (``migrations.LEGACY_REVISIONS``), and this revision adds only the columns
and the index a database lacks. All are nullable: older rows read NULL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_ranks_and_action_link"
down_revision = "0002_gpu_idle"
branch_labels = None
depends_on = None

COLUMNS = (("steps", "rank"), ("steps", "local_rank"), ("steps", "world_size"), ("layer_costs", "rank"),
           ("actions", "source_session_id"))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {table: {c["name"] for c in inspector.get_columns(table)} for table in {t for t, _ in COLUMNS}}
    for table, column in COLUMNS:
        if column not in have[table]:
            op.add_column(table, sa.Column(column, sa.Integer(), nullable=True))
    if "ix_actions_source_session_id" not in {i["name"] for i in inspector.get_indexes("actions")}:
        op.create_index("ix_actions_source_session_id", "actions", ["source_session_id"])


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
