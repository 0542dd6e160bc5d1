"""`lmlm demo`: the end-to-end demo on the generated world."""

from __future__ import annotations


def demo() -> None:
    """Run the end-to-end demo (world -> teacher -> annotator -> KB -> LMLM + baseline -> report)."""
    raise SystemExit("lmlm demo is not built yet (issue 8)")
