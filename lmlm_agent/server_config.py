"""The server's settings (:class:`ServerConfig`): limits and access rules, from ``<run>/server.yaml``,
the environment and the command line.

A module of its own, without the web stack, so that ``lmlm serve --help`` derives its
options from these fields (:mod:`lmlm_agent.cli.options`) without importing the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.settings import check_types, load_settings

TOKEN_ENV = "LMLM_API_TOKEN"


@dataclass
class ServerConfig:
    """Limits and access rules; read from ``<run>/server.yaml`` when present, then the environment."""

    model_id: str = field(default="lmlm", metadata={"help": "Model id clients send and /v1/models lists."})
    token: str | None = field(
        default=None, metadata={"help": "Bearer token that knowledge writes and deletes require; without one they are refused.",
                                "env": TOKEN_ENV},
    )
    public_read: bool = field(
        default=True,
        metadata={"help": "Reads and generation need no token; off: they need the server's or a namespace's token."},
    )
    namespace_tokens: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Private namespaces, namespace -> bearer token: reading one (lookup, facts, generation with that "
                          "`namespace`) and writing it need its own token; the server-wide token does not open it."},
    )
    log_queries: bool = field(
        default=False,
        metadata={"help": "Keep query strings (the entity and relation of lookups and deletes) in the access log; "
                          "off: '?<redacted>', so a forgotten fact's key does not stay in the log. Process-wide."},
    )
    max_request_bytes: int = field(default=64_000, metadata={"help": "Largest request body accepted (413 above)."})
    max_tokens: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for."})
    default_max_tokens: int = field(default=128, metadata={"help": "max_tokens when a chat request gives none."})
    max_messages: int = field(default=64, metadata={"help": "Most messages in one chat request."})
    max_batch: int = field(default=8, metadata={"help": "Most rows (prompts x n, over all batched requests) decoded together."})
    max_queue: int = field(default=32, metadata={"help": "Requests waiting for the decoder; beyond it 503 server_busy."})
    semantic: bool = field(
        default=False,
        metadata={"help": "Semantic (embedding) lookups after exact ones; the demo's kb.sqlite needs `lmlm kb rebuild-index` first."},
    )
    store: str | None = field(
        default=None,
        metadata={"help": "Knowledge base: a SQLite path or a database URL (postgresql://...), opened as it is (never "
                          "created); http(s)://host:port reads another `lmlm serve`'s knowledge (read-only); any "
                          "scheme tools.register_backend added. Default: the run's kb.sqlite. Replicas that give "
                          "the same URL share one store."},
    )
    index: str | None = field(
        default=None,
        metadata={"help": "Semantic index (with semantic: true): a Chroma directory or an http(s):// Chroma server "
                          "(`chroma run`), which replicas share. Default: the directory beside a SQLite store."},
    )

    def __post_init__(self) -> None:
        check_types(self)
        _check_private_namespaces(self.namespace_tokens)
        if self.token == "":
            raise ValueError("token must not be empty")
        if self.index is not None and not self.semantic:
            raise ValueError("index is read only by semantic lookups: set semantic: true (--semantic) or leave index out")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = (), **values: Any) -> ServerConfig:
        """Defaults < the YAML file (if it exists) < the environment's token < ``key=value`` overrides <
        typed ``values`` (None: not given), by the project's one path, :func:`tools.settings.load_settings`.

        Every value is checked at start-up as written (no coercion): a wrong type or an
        unknown name is a ``ValueError`` naming the file and the field, never a server
        that starts and then fails its requests.
        """
        found = path is not None and Path(path).exists()
        return load_settings(cls, path if found else None, overrides, values, coerce=False)


def _check_private_namespaces(tokens: dict[str, str]) -> None:
    """Each name of ``namespace_tokens`` is a valid namespace and each token non-empty."""
    from tools.schema import InvalidInput, clean_namespace

    for name, token in tokens.items():
        try:
            clean_namespace(name)
        except InvalidInput as exc:
            raise ValueError(f"namespace_tokens: {exc}") from None
        if not token:
            raise ValueError(f"namespace_tokens: the token of {name!r} is empty")


__all__ = ["ServerConfig", "TOKEN_ENV"]
