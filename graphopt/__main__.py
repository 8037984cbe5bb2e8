"""``python -m graphopt``."""

from graphopt.cli import main

raise SystemExit(main())
