"""`python -m forwarder` runs the command-line interface."""

from forwarder.cli import main

raise SystemExit(main())
