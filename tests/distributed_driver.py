"""Run several `lmlm` command lines in order, in this process (argv: one JSON list of argument lists).

tests/test_distributed.py starts this once under `accelerate launch`, so the two processes pay
the start-up (torch, transformers, process group) once for all the commands they run.
"""

import json
import sys

from lmlm_agent.cli import app, close_process_group

try:
    for argv in json.loads(sys.argv[1]):
        app(argv, standalone_mode=False)
finally:
    close_process_group()
