"""Version 2: gpu_idle, a GPU's measured idle power remembered across sessions."""

import sqlalchemy as sa
from alembic import op

revision = "0002_gpu_idle"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_idle",
        sa.Column("gpu_key", sa.String(200), primary_key=True),
        sa.Column("idle_power_w", sa.Float(), nullable=False),
        sa.Column("stretch_s", sa.Float(), nullable=False),
        sa.Column("measured_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
