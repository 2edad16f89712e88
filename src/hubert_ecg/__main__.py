"""``python -m hubert_ecg ...``: the same command line as the ``hubert-ecg`` script."""

import sys

from hubert_ecg.cli import main

if __name__ == "__main__":
    sys.exit(main())
