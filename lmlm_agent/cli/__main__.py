"""`python -m lmlm_agent.cli` runs the `lmlm` command (useful from a checkout without the console script)."""

from lmlm_agent.cli import main

if __name__ == "__main__":  # the index build's worker processes (spawned) import this module again: run nothing there
    main()
