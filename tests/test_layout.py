"""The design's import rules (DESIGN §1, §9.1), read from the source: `sfu` imports neither
`control_api` nor `recorder`; `recorder` knows `sfu` by types only; the worker entry point is
where `sfu` and `recorder` are composed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(package: str) -> dict[str, set[str]]:
    """Top-level packages imported by each module of `package` (typing-only imports excluded)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                typing_only |= {id(n) for n in ast.walk(node)}
        names = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_sfu_imports_neither_the_control_plane_nor_the_recorder():
    offenders = {m: n & {"control_api", "recorder", "media_worker"} for m, n in imports("sfu").items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_recorder_imports_no_control_plane():
    offenders = {m: n & {"control_api", "media_worker"} for m, n in imports("recorder").items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_control_plane_holds_no_peer_connection():
    """Peer connections live in the workers: control_api never imports aiortc or aioice."""
    offenders = {m: n & {"aiortc", "aioice", "av"} for m, n in imports("control_api").items()}
    assert {m: n for m, n in offenders.items() if n} == {}
