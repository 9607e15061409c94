"""Alembic revisions of the wattlens schema, oldest first (a package so that installs ship them)."""
