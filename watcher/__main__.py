"""`python -m watcher`: the same as the `watcher` console script."""

import sys

from watcher.cli import main

sys.exit(main())
