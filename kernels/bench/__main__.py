"""``python -m kernels.bench``: see `kernels.bench`."""

from . import main

if __name__ == "__main__":  # not when a test collector imports it
    main()
