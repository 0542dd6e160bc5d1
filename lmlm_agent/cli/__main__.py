"""`python -m lmlm_agent.cli` runs the `lmlm` command (useful from a checkout without the console script)."""

from lmlm_agent.cli import main

main()
