"""Entry point: ``python train.py [COMMAND] [options]``, also as ``ray job submit -- python train.py ...``.

Thin by design: all logic lives in :mod:`rl_agents`. With no command it runs the main job on the built-in
synthetic data. Until the training issue lands, the main job is ``env-demo`` (the environment driven by oracle,
random and do-nothing policies, with the paper's metrics); ``python train.py --help`` lists every command.
"""

import sys

from rl_agents.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_command="env-demo"))
