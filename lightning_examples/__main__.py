"""``python -m lightning_examples ...``: see `lightning_examples.cli`."""

from lightning_examples.cli import main

if __name__ == "__main__":
    main()
