"""``python -m tokenclean``: the same CLI as the ``tokenclean`` command (also what ``torchrun -m`` runs)."""

from tokenclean.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
