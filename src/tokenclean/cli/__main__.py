"""``python -m tokenclean.cli``: the same CLI as ``tokenclean`` and ``python -m tokenclean``."""

from tokenclean.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
