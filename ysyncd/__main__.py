"""``python -m ysyncd``: the same entry point as the ``ysyncd`` console script."""

from __future__ import annotations

from ysyncd.cli import main

if __name__ == "__main__":
    main()
