"""Bad URLs, files and config values give the `lmlm` command one clear error line, never a traceback.

Each case runs the real command in a subprocess (as a user types it) and checks:
exit status non-zero, no traceback, exactly one error line, and that line names
what was wrong (the URL, file or field).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A click usage error prints its message as "Invalid value for '--port': ..." (in a panel); ours print "error: ...".
ERROR_LINE = re.compile(r"^(error:|Error:|Invalid value|Missing option|No such option)", re.IGNORECASE)
BORDER = " │╭╮╰╯─┃━"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A directory of good and broken artefacts: runs, stores, indexes, YAML files."""
    from tools import open_store

    base = tmp_path_factory.mktemp("bad-input")
    (base / "file.txt").write_text("a file where a directory is expected\n")
    (base / "garbage.sqlite").write_bytes(b"this is not an SQLite database at all" * 50)

    def run_dir(name: str, yaml: str | None = None) -> Path:
        run = base / name
        (run / "lmlm").mkdir(parents=True)
        (run / "lmlm" / "config.json").write_text("{}")  # every case fails before the model loads
        store = open_store(run / "kb.sqlite", index=False)
        store.write("Ada Lovelace", "birth year", "1815")
        store.close()
        if yaml is not None:
            (run / "server.yaml").write_text(yaml)
        return run

    run_dir("run")
    run_dir("broken-yaml", "max_tokens: [1\n")
    run_dir("wrong-type-yaml", "max_tokens: '100'\n")
    run_dir("unknown-key-yaml", "max_tokn: 3\n")
    run_dir("bad-tokens-yaml", "namespace_tokens: [team]\n")
    run_dir("bad-namespace-yaml", "namespace_tokens: {'bad ns!': abc}\n")
    corrupt_kb = run_dir("corrupt-kb")
    (corrupt_kb / "kb.sqlite").write_bytes(b"garbage" * 500)
    corrupt_index = run_dir("corrupt-index")
    (corrupt_index / "kb.chroma").mkdir()
    (corrupt_index / "kb.chroma" / "chroma.sqlite3").write_bytes(b"not sqlite" * 500)
    broken_checkpoint = run_dir("broken-checkpoint")
    (broken_checkpoint / "lmlm" / "config.json").write_text("{not json")
    readonly = run_dir("readonly")
    for path in (readonly, readonly / "lmlm"):
        path.chmod(0o555)
    yield base
    for path in (readonly, readonly / "lmlm"):
        path.chmod(0o755)


def _readonly_prefix() -> list[str] | None:
    """How to run a process that file permissions bind: as is for a normal user; root without its override."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


def _clean_environ() -> dict[str, str]:
    """This checkout first on the path, offline, and no LMLM_* setting of the caller's shell."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("LMLM_")}
    return {**kept, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}


PG_BAD_PORT = "postgresql://u@127.0.0.1:notaport/test"
# (id, arguments, extra environment, what the error line must name)
CASES = [
    ("pg-url-bad-port", ["kb", "stats", "--db", PG_BAD_PORT], {}, PG_BAD_PORT),
    ("pg-url-no-driver", ["kb", "stats", "--db", "postgresql+nodriver://u@127.0.0.1/test"], {}, "postgresql+nodriver"),
    ("mysql-url", ["kb", "stats", "--db", "mysql://u@localhost/db"], {}, "mysql://u@localhost/db"),
    ("mysql-url-from-env", ["kb", "stats"], {"LMLM_KB_DB": "mysql://u@localhost/db"}, "mysql://u@localhost/db"),
    ("unparseable-url", ["kb", "stats", "--db", "://nothing"], {}, "://nothing"),
    ("pg-unreachable", ["kb", "stats", "--db", "postgresql://u@127.0.0.1:1/test"], {}, "127.0.0.1"),
    ("db-under-a-file", ["kb", "stats", "--db", "{base}/file.txt/kb.sqlite"], {}, "file.txt"),
    ("db-not-sqlite", ["kb", "get", "a", "b", "--db", "{base}/garbage.sqlite", "--index", "off"], {}, "garbage.sqlite"),
    ("corrupt-chroma", ["kb", "get", "a", "b", "--db", "{base}/corrupt-index/kb.sqlite"], {}, "kb.chroma"),
    ("import-missing-file", ["kb", "import", "{base}/missing.jsonl", "--db", "{base}/new.sqlite", "--index", "off"], {},
     "missing.jsonl"),
    ("import-a-directory", ["kb", "import", "{base}/run", "--db", "{base}/new.sqlite", "--index", "off"], {}, "{base}/run"),
    ("export-under-a-file", ["kb", "export", "{base}/file.txt/out.jsonl", "--db", "{base}/run/kb.sqlite"], {}, "file.txt"),
    ("ingest-run-and-db", ["kb", "ingest", "{base}/file.txt", "--run", "{base}/run", "--db", "{base}/other.sqlite"], {},
     "--db"),
    ("serve-missing-run", ["serve", "--run", "{base}/missing"], {}, "missing"),
    ("serve-broken-yaml", ["serve", "--run", "{base}/broken-yaml"], {}, "server.yaml"),
    ("serve-wrong-type-yaml", ["serve", "--run", "{base}/wrong-type-yaml"], {}, "max_tokens"),
    ("serve-unknown-key-yaml", ["serve", "--run", "{base}/unknown-key-yaml"], {}, "max_tokn"),
    ("serve-namespace-tokens-not-a-mapping", ["serve", "--run", "{base}/bad-tokens-yaml"], {}, "namespace_tokens"),
    ("serve-namespace-tokens-bad-name", ["serve", "--run", "{base}/bad-namespace-yaml"], {}, "namespace_tokens"),
    ("serve-missing-config", ["serve", "--run", "{base}/run", "--config", "{base}/missing.yaml"], {}, "missing.yaml"),
    ("serve-corrupt-kb", ["serve", "--run", "{base}/corrupt-kb"], {}, "kb.sqlite"),
    ("serve-corrupt-chroma", ["serve", "--run", "{base}/corrupt-index", "--semantic"], {}, "kb.chroma"),
    ("serve-broken-checkpoint", ["serve", "--run", "{base}/broken-checkpoint"], {}, "config.json"),
    ("serve-bad-port", ["serve", "--run", "{base}/run", "--port", "70000"], {}, "--port"),
    ("serve-unknown-device", ["serve", "--run", "{base}/run", "--device", "nonsense"], {}, "--device"),
    ("serve-unresolvable-host", ["serve", "--run", "{base}/run", "--host", "no-such-host.invalid"], {}, "--host"),
    ("chat-unknown-device", ["chat", "--run", "{base}/run", "--device", "nonsense"], {}, "--device"),
    ("serve-zero-batch", ["serve", "--run", "{base}/run", "--max-batch", "0"], {}, "max_batch"),
    ("serve-readonly-run", ["serve", "--run", "{base}/readonly"], {}, "kb.sqlite"),
    ("chat-missing-run", ["chat", "--run", "{base}/missing"], {}, "missing"),
    ("eval-missing-data", ["eval", "perplexity", "-m", "{base}/run/lmlm", "-d", "{base}/missing.jsonl"], {}, "missing.jsonl"),
    ("train-missing-config", ["train", "pretrain", "--config", "{base}/missing.yaml"], {}, "missing.yaml"),
]


@pytest.mark.parametrize("args,env,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_line(files, args, env, names) -> None:
    prefix: list[str] | None = []
    if "{base}/readonly" in args:
        prefix = _readonly_prefix()
        if prefix is None:
            pytest.skip("running as root without setpriv: a read-only directory cannot be made")
    argv = [a.replace("{base}", str(files)) for a in args]
    environ = {**_clean_environ(), "COLUMNS": "400", "TERMINAL_WIDTH": "400", **env}
    proc = subprocess.run([*prefix, sys.executable, "-m", "lmlm_agent.cli", *argv], capture_output=True, text=True,
                          env=environ, cwd=files, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line.strip(BORDER) for line in output.splitlines()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, output
    assert names.replace("{base}", str(files)) in errors[0], output


def test_a_password_in_a_database_url_is_not_printed(files) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmlm_agent.cli", "kb", "stats", "--db", "mysql://ada:hunter2@localhost/db"],
                          capture_output=True, text=True, env=_clean_environ(), cwd=files, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "mysql://ada:***@localhost/db" in output and "hunter2" not in output


def test_debug_env_shows_the_traceback(files) -> None:
    environ = {**_clean_environ(), "LMLM_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmlm_agent.cli", "kb", "stats", "--db", "mysql://u@localhost/db"],
                          capture_output=True, text=True, env=environ, cwd=files, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stdout + proc.stderr
