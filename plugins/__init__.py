"""shipcast's built-in channels, one module or sub-package each."""
