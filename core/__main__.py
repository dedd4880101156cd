"""``python -m shipcast`` is the ``shipcast`` command."""

from .cli import main

main()
