"""``python -m masklab`` is the ``masklab`` command (also what ``torchrun -m masklab`` runs)."""

from masklab.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
