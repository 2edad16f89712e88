"""`python -m hubert_ecg.cli` (also what torchrun launches with -m)."""

import sys

from . import main

sys.exit(main())
