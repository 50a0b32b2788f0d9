from lpperf.cli import main

raise SystemExit(main())
