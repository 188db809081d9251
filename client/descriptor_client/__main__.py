"""``python -m descriptor_client``: the same as ``descriptorctl``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
