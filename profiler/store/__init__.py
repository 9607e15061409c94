"""The session store: SQLAlchemy 2.0 models and ``Store``, the only code that speaks SQL."""

from wattlens.profiler.store.store import Store, check_writable, default_db_path, resolve_db

__all__ = ["Store", "check_writable", "default_db_path", "resolve_db"]
