"""``python -m shipcast`` is the ``shipcast`` command."""

from shipcast.app.cli import main

main()
