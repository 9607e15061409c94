"""The desktop app: thin Qt views (``qt_*.py``, classes ``Qt*``) over plain-Python models
(``models/``, no Qt). Importing this package imports nothing heavy; ``main.run_gui`` starts it."""
