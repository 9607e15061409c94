from wattlens.app.cli import main

raise SystemExit(main())
