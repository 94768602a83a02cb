"""``python -m tools.train`` (same as ``python -m tools train``)."""

from tools.train.cli import main

raise SystemExit(main())
