"""``python -m miemss_node`` runs the command line."""

from miemss_node.cli import main

raise SystemExit(main())
