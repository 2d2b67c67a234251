"""``python -m sockpool.worker``: run one worker process."""

import sys

from sockpool.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
