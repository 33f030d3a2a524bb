"""``python -m rl_agents.cli``."""

import sys

from rl_agents.cli import main

sys.exit(main())
