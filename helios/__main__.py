from __future__ import annotations

import sys

from helios.cli import main

sys.exit(main())
