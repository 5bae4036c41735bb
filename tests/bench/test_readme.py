"""bench/readme.py writes the results table between its markers, replacing the old one."""

import json
from pathlib import Path

from bench.readme import END, START, main

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "sweep-1pub.json"


def test_table_goes_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main([str(RESULTS), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    report = json.loads(RESULTS.read_text())
    block = text.split(START)[1].split(END)[0]
    assert " ".join(report["command"]) in block
    rows = [line for line in block.splitlines() if line.startswith(("| ours", "| baseline"))]
    assert len(rows) == len(report["runs"])
    assert text.count(START) == 1


def test_missing_markers_add_a_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    main([str(RESULTS), "--readme", str(readme)])
    assert "## Bench results" in readme.read_text() and START in readme.read_text()
