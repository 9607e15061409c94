"""Write the next revision from what models.py has that the migrations do not build:

    python -m wattlens.profiler.store.migrations new "what changed"

The head schema is built by the migrations in a temporary SQLite file, compared with the models
by Alembic's autogenerate, and the difference is written as ``versions/NNNN_what_changed.py``
(batch operations: SQLite rebuilds a table for changes it cannot ALTER). Review it (autogenerate
misses renames and data moves), set ``models.SCHEMA_REVISION`` to its id (and ``SCHEMA_VERSION``
when older wattlens versions could no longer use the database), then run
tests/test_store_migrations.py.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from wattlens.profiler.store import migrations

TEMPLATE = '''"""{message}"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    raise NotImplementedError("wattlens databases are never downgraded (keep a copy of the file instead)")
'''


def write_revision(message: str, metadata, folder: Path | None = None) -> Path | None:
    """The next revision in ``folder``/versions (by default the package's) for what ``metadata``
    has beyond the head; None when they agree."""
    from alembic.autogenerate import produce_migrations, render_python_code
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    folder = folder or migrations.HERE
    script = migrations.script_directory(folder)
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/head.db")
        try:
            with engine.begin() as c:
                migrations.upgrade(c, script, None, None)
                ops = produce_migrations(MigrationContext.configure(c), metadata).upgrade_ops
        finally:
            engine.dispose()
    if ops.is_empty():
        return None
    code = render_python_code(ops, render_as_batch=True)
    body = "\n".join(line for line in code.splitlines() if line.strip() and not line.strip().startswith("# ###"))
    number = len(list(script.walk_revisions())) + 1
    # alembic_version.version_num is VARCHAR(32): "NNNN_" and at most 27 characters of the message
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower())[:27].strip("_") or "change"
    revision = f"{number:04d}_{slug}"
    path = folder / "versions" / f"{revision}.py"
    path.write_text(TEMPLATE.format(message=message.replace('"', "'"), revision=revision,
                                    down_revision=script.get_current_head(), body=body))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wattlens.profiler.store.migrations",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="write the next revision from the models' difference to the head")
    new.add_argument("message", help="what changed (the revision's docstring and file name)")
    args = parser.parse_args(argv)
    from wattlens.profiler.store import models

    path = write_revision(args.message, models.Base.metadata)
    if path is None:
        print("models.py and the migrations agree: no revision written")
        return 0
    print(f"wrote {path}\nreview it, then set SCHEMA_REVISION = {path.stem!r} in profiler/store/models.py "
          "(and bump SCHEMA_VERSION if older wattlens versions could not use the database) and run "
          "tests/test_store_migrations.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
