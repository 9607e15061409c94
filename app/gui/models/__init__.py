"""Plain-Python models behind the GUI: no Qt imports here, so they are testable (and usable)
without a display. Views subscribe to their :class:`~wattlens.app.gui.models.signal.Signal`s."""
