"""``python -m cellseg`` runs the command line."""

from cellseg.cli import main

raise SystemExit(main())
