from fleetpulse.cli import main

raise SystemExit(main())
