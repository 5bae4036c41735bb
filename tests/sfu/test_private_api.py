"""The aiortc/aioice private names the media plane uses live in sfu/aiortc_hooks.py only, and
`check_private_api()` names each one that goes missing."""

import ast
from pathlib import Path

import pytest

from sfu import aiortc_hooks

SFU = Path(aiortc_hooks.__file__).parent
# Modules of aiortc/aioice whose names the hooks take on trust (not part of aiortc's API).
PRIVATE_MODULES = ("aioice", "aiortc.rtcpeerconnection", "aiortc.codecs", "aiortc.rtcicetransport")


def test_every_checked_class_or_module_name_is_reported_when_missing(monkeypatch):
    aiortc_hooks.check_private_api()
    for owner, name, _ in aiortc_hooks._PRIVATE_NAMES:
        with monkeypatch.context() as m:
            m.delattr(owner, name)
            with pytest.raises(RuntimeError, match=name):
                aiortc_hooks.check_private_api()
    assert "aioice.ice.Connection.get_component_candidates" in aiortc_hooks.private_names()
    assert "aioice.ice.get_host_addresses" in aiortc_hooks.private_names()
    assert "aiortc.rtcpeerconnection.find_common_codecs" in aiortc_hooks.private_names()


def test_no_other_sfu_module_imports_aioice_or_aiortc_internals():
    offenders = []
    for path in SFU.rglob("*.py"):
        if path.name == "aiortc_hooks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith(PRIVATE_MODULES):
                    offenders.append(f"{path.relative_to(SFU)}: {name}")
    assert offenders == []


def test_the_srtp_entry_point_of_the_fast_path_is_checked(monkeypatch):
    """The fast path calls pylibsrtp's own srtp_protect on a session's srtp_t: a pylibsrtp whose
    function has another signature (libsrtp 3 changed it) stops start-up with its name."""
    assert "pylibsrtp._binding.lib.srtp_protect" in aiortc_hooks.private_names()
    assert "pylibsrtp.Session._srtp" in aiortc_hooks.private_names()
    assert aiortc_hooks.srtp_protect_address() > 0
    monkeypatch.setattr(aiortc_hooks, "_SRTP_PROTECT_TYPE", "srtp_err_status_t(*)(void)")
    with pytest.raises(RuntimeError, match="srtp_protect"):
        aiortc_hooks.check_private_api()
    with pytest.raises(RuntimeError, match="srtp_protect"):
        aiortc_hooks.srtp_protect_address()
