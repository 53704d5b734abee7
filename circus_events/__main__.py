"""``python -m circus_events`` is ``circus-events``."""

from .cli import main

main()
