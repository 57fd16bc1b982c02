"""``python -m faceveil.attacks``: the attack suite, as ``faceveil attack``."""

import sys

from .suite import main

sys.exit(main())
