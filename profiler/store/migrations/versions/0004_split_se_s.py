"""Version 4: layer_costs.split_se_s, the standard error (seconds) of the time a row got from a
split by pooled native reads (the backward by op or module class, the optimizer's parts by tensor
op). Nullable: older rows read NULL, and their shares' standard errors lack that term."""

import sqlalchemy as sa
from alembic import op

revision = "0004_split_se_s"
down_revision = "0003_ranks_and_action_link"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "split_se_s" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("layer_costs")}:
        op.add_column("layer_costs", sa.Column("split_se_s", sa.Float(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
