"""The session store: SQLAlchemy 2.0 models and ``Store``, the only code that speaks SQL."""

from wattlens.profiler.store.store import Store, default_db_path, resolve_db

__all__ = ["Store", "default_db_path", "resolve_db"]
