from vqaserve.cli import main

raise SystemExit(main())
