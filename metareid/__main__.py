"""``python -m metareid ...`` runs the ``metareid`` command (also under ``torchrun -m``)."""

import sys

from metareid.cli import main

if __name__ == "__main__":
    sys.exit(main())
