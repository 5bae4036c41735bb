"""bench/readme.py writes the results table between its markers, replacing the old one."""

import json
from pathlib import Path

from bench.readme import END, START, main

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "sweep-1pub.json"


def test_the_single_table_of_an_earlier_version_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main([str(RESULTS), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    report = json.loads(RESULTS.read_text())
    block = text.split("bench-results:start bench/results/sweep-1pub.json -->")[1].split("bench-results:end")[0]
    assert " ".join(report["command"]) in block
    rows = [line for line in block.splitlines() if line.startswith(("| ours", "| baseline"))]
    assert len(rows) == len(report["runs"])
    assert START not in text and END not in text
    assert text.count("<!-- bench-results:start bench/results/sweep-1pub.json -->") == 1


def test_missing_markers_add_a_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    main([str(RESULTS), "--readme", str(readme)])
    text = readme.read_text()
    assert "## Bench results" in text and "<!-- bench-results:start bench/results/sweep-1pub.json -->" in text


def _report(json_path: str, readme: str, subscribers: int) -> dict:
    report = json.loads(RESULTS.read_text())
    report["command"] = ["meeting-sfu", "bench", "--sweep", str(subscribers), "--json", json_path, "--readme", readme]
    report["runs"] = [dict(report["runs"][0], subscribers=subscribers)]
    report["ratios"] = []
    return report


def test_a_table_replaces_only_its_own_with_paths_relative_to_the_readme(tmp_path):
    from bench.readme import write

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nResults:\n\nthe end\n")
    ours = tmp_path / "bench" / "results" / "a.json"
    write(readme, [_report(str(ours), str(readme), 5)])  # the caller passed absolute paths
    write(readme, [_report("bench/results/b.json", "README.md", 7)])
    write(readme, [_report(str(ours), str(readme), 9)])  # a.json again: replaces its own only
    text = readme.read_text()
    assert str(tmp_path) not in text  # no caller's absolute path
    assert "`meeting-sfu bench --sweep 9 --json bench/results/a.json --readme README.md`" in text
    assert "--sweep 7 --json bench/results/b.json" in text
    assert "--sweep 5 " not in text
    assert text.count("<!-- bench-results:start") == 2 and text.index("a.json -->") < text.index("b.json -->")
    assert text.startswith("# x\n\nResults:\n\nthe end\n")
    # join to first frame is a column of the table
    header = next(line for line in text.splitlines() if line.startswith("| server |"))
    assert "join to first frame p50/p95 (ms)" in header
    row = next(line for line in text.splitlines() if line.startswith("| ours | 1 x 1 x 9 "))
    assert len(row.split("|")) == len(header.split("|"))


def test_the_readme_tables_are_those_of_the_committed_results():
    from bench.readme import render

    root = RESULTS.parents[2]
    text = (root / "README.md").read_text()
    for path in sorted((root / "bench" / "results").glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("bench") != "meeting-sfu load":
            continue  # other benches (capacity, simulcast) are quoted in prose, not as these tables
        assert render(report) in text, path.name
