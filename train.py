"""Entry point: ``python train.py [COMMAND] [options]``, also as ``ray job submit -- python train.py ...``.

Thin by design: all logic lives in :mod:`rl_agents`. With no command (or only options) it trains, i.e. it is
``pixeldrl train``; with no arguments at all it is the README's main job: the ``small`` preset on the built-in
synthetic data. ``python train.py --help`` lists every command.
"""

import sys

from rl_agents.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_command="train"))
