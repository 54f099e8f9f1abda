from timewait.cli import main

raise SystemExit(main())
