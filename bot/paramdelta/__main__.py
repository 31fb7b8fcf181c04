from paramdelta.cli import main

raise SystemExit(main())
