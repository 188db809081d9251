"""``python -m descriptor_server``: the same as ``descriptor-server``."""

import sys

from .app import main

sys.exit(main())
