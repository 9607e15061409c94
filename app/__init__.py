"""wattlens.app: the CLI, the Qt GUI and reports. Importing this package imports nothing heavy."""
