"""`lmlm eval`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Evaluate checkpoints: perplexity (static, dynamic, normalised) and masked-token loss.", no_args_is_help=True)


@app.command("perplexity")
def perplexity(
    checkpoints: List[Path] = typer.Option(..., "--checkpoint", "-m", help="Checkpoint directory (repeat to compare an LMLM and its baseline)."),
    data: Path = typer.Option(..., "--data", "-d", help="Held-out annotated documents (our JSONL or the published JSON)."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N documents."),
    out: Optional[Path] = typer.Option(None, help="Directory for perplexity.json and perplexity.md."),
) -> None:
    """Static, dynamic and normalised perplexity and the value-token loss; lookups answered by the data's own triples."""
    import json

    from training.corpus import read_documents
    from training.perplexity import evaluate_checkpoint, markdown

    docs = read_documents(data)[:limit]
    reports = [evaluate_checkpoint(path, docs) for path in checkpoints]
    table = markdown(reports, title=f"Perplexity on {data.name} ({len(docs)} documents)")
    typer.echo(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"checkpoint": str(p), **r.to_dict()} for p, r in zip(checkpoints, reports)]
        (out / "perplexity.json").write_text(json.dumps(rows, indent=2))
        (out / "perplexity.md").write_text(table)
        typer.echo(f"wrote {out}/perplexity.json and perplexity.md")
