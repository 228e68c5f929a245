"""``python -m layers.bench``: see `layers.bench`."""

from . import main

if __name__ == "__main__":  # not when a test collector imports it
    main()
