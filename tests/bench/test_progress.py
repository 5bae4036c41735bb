"""Bench progress: in place on a terminal, one line per step elsewhere (no carriage returns)."""

import io

from bench.load import portable_command
from bench.progress import Progress
from bench.server_process import ROOT


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _steps(progress: Progress) -> None:
    progress.show("sfu S=2: starting the server (pid 1)")
    for ready in range(3):
        progress.show("sfu S=2: subscribers", f"ready {ready}/2")
    for t in (0.0, 0.5, 1.0):
        progress.bar("sfu S=2: measuring", t, 1.0)
    progress.done()


def test_without_a_terminal_each_step_is_one_line_with_its_last_state():
    out = io.StringIO()
    _steps(Progress(stream=out))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        "sfu S=2: starting the server (pid 1)",
        "sfu S=2: subscribers ready 2/2",
        "sfu S=2: measuring [" + "#" * 30 + "]   1.0/1 s",
    ]


def test_on_a_terminal_the_line_is_rewritten_in_place():
    out = _Terminal()
    _steps(Progress(stream=out))
    assert out.getvalue().count("\r") == 7 and out.getvalue().endswith("\n")


def test_the_report_keeps_paths_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "bench")
    command = portable_command(["--sweep", "1", "--json", "results/x.json", f"--readme={ROOT / 'README.md'}"])
    assert command == ["meeting-sfu", "bench", "--sweep", "1", "--json", "bench/results/x.json", "--readme=README.md"]
    outside = portable_command(["--json", str(tmp_path / "x.json")])
    assert outside[-1] == str(tmp_path / "x.json")
