"""``python -m p2pdb``: the ``p2pdb`` command line."""

import sys

from .cli import main

sys.exit(main())
