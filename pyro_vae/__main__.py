"""``python -m pyro_vae`` runs the command line."""

import sys

from pyro_vae.cli import main

if __name__ == "__main__":
    sys.exit(main())
