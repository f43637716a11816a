"""The benchmark suite runs end to end (quick mode, cheap figures) and writes its document.

Timings are not asserted: this proves `make bench` is not broken, nothing more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_run_all_quick_writes_the_document(tmp_path: Path) -> None:
    out, results = tmp_path / "benchmarks.md", tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run_all",
            "--quick",
            "--only",
            "init,extraction",
            "--output",
            str(out),
            "--results",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = out.read_text()
    assert doc.startswith("# Benchmarks")
    assert "Machine: " in doc and "SQLite" in doc
    assert "## conversation-init latency" in doc
    assert "## Extraction throughput" in doc
    assert "| server-side init p95, returning caller |" in doc
    assert "| client-side init p95, returning caller |" in doc
    stored = json.loads(results.read_text())
    assert set(stored) == {"init", "extraction"}
    assert all(r["value"] > 0 for fig in stored.values() for r in fig["rows"])
