"""`lmlm serve` and `lmlm chat`."""

from __future__ import annotations


def serve() -> None:
    """Serve a run over an OpenAI-compatible HTTP API."""
    raise SystemExit("lmlm serve is not built yet (issue 8)")


def chat() -> None:
    """Chat with a trained LMLM in the terminal."""
    raise SystemExit("lmlm chat is not built yet (issue 8)")
