"""The example program runs as a user would run it, and organizes correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import write_shapes

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "photo_organizer.py"


def test_photo_organizer(tmp_path):
    labels = write_shapes(tmp_path / "photos", per_class=2)
    queries = ["a red star", "a blue circle", "a yellow square"]
    p = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "photos"), *queries,
                        "--db", str(tmp_path / "db"), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    for q in queries:
        mine = [Path(f).name for f in plan.get(q, [])]
        expected = {n for n, lab in labels.items() if f"a {lab}" == q}
        assert expected <= set(mine), (q, mine)
