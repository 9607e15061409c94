"""Version 5: the row ids of layer_costs, steps and events are BIGINT on PostgreSQL (and their
sequences count to 2^63 - 1), as samples' already were: a shared store passes 2^31 layer rows in
hours to days, and then every insert failed. SQLite is unchanged: its INTEGER PRIMARY KEY is the
64-bit rowid already."""

import sqlalchemy as sa
from alembic import op

revision = "0005_bigint_row_ids"
down_revision = "0004_split_se_s"
branch_labels = None
depends_on = None

TABLES = ("layer_costs", "steps", "events")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        op.alter_column(table, "id", type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)
        seq = bind.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
        if seq is not None:  # a serial's sequence is "AS integer": it would stop at 2^31 - 1
            bind.exec_driver_sql(f"ALTER SEQUENCE {seq} AS bigint")


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
