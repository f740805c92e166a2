"""`python -m tapeout.compiler` is the `tapeout` command."""

import sys

from tapeout.compiler.cli import main

sys.exit(main())
