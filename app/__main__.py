"""`python -m wattlens.app`: the `wattlens` command (wattlens.app.cli.main). A Ctrl-C while the
CLI's module loads ends as one anywhere else in it does: one line, exit 130 (cli.main)."""

try:
    from wattlens.app.cli import main
except KeyboardInterrupt:
    import sys

    sys.stderr.write("wattlens: interrupted\n")  # cli.INTERRUPTED_LINE, whose import was cut short
    raise SystemExit(130) from None

raise SystemExit(main())
