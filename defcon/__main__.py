"""``python -m defcon ...``: the same as the ``defcon`` command."""

from .cli import main

raise SystemExit(main())
