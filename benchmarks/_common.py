"""What every benchmark shares: where results go and how they are written."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def save_results(name: str, table: str, **json_files: dict) -> None:
    """Write ``<name>.md`` (the table, also printed) and one ``<key>.json`` per keyword argument."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for stem, data in json_files.items():
        (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
