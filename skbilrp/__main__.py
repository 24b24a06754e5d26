"""``python -m skbilrp``: the same as the ``skbilrp`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
