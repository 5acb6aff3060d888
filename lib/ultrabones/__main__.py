from ultrabones.pipeline.cli import main

raise SystemExit(main())
