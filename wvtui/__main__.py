"""`python -m wvtui` is the `wvtui` command."""

import sys

from wvtui.cli import main

sys.exit(main())
