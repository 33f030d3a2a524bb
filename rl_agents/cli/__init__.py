"""The ``pixeldrl`` command line (also behind ``python train.py``): the parser in :mod:`.parsers`, one module per
group of commands (:mod:`.data`, :mod:`.training`, :mod:`.reports`, :mod:`.use`)."""

from __future__ import annotations

import importlib
import logging
import sys

from pixelrl_env.io import DataError
from rl_agents.cli.common import err_console
from rl_agents.cli.parsers import build_parser


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if default_command:  # `python train.py [-v] [options]` means `pixeldrl [-v] train [options]`
        i = 0
        while i < len(argv) and argv[i] in ("-v", "--verbose"):
            i += 1
        rest = argv[i:]
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            argv = [*argv[:i], default_command, *rest]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    module, function = args.run.split(":")
    try:
        return int(getattr(importlib.import_module(f"rl_agents.cli.{module}"), function)(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:  # an output not writable
        where = f"{e.filename}: " if e.filename else ""
        err_console.print(f"[bold red]error:[/] {where}{e.strerror or e} (a path this command writes or reads: "
                          "choose one you can use)", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # training has already written checkpoints/last.pt; --resume continues
        err_console.print("interrupted: stopped with a checkpoint (continue with --resume)")
        return 130
