"""The README's main command runs: `launch/demo.py` end to end on a generated page."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_and_round_trips_through_transformers(tmp_path):
    demo = runpy.run_path(str(REPO / "launch" / "demo.py"))  # not run as __main__: we call main() ourselves
    assert demo["main"](["--out", str(tmp_path), "--vocab-size", "600"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["words"] > 10 and summary["tokens"] > summary["words"]
    assert summary["max_abs_diff_vs_hf"] <= 1e-5
    for name in ("model/config.json", "model/model.safetensors", "model-hf/config.json", "tokenizer/vocab.json"):
        assert (tmp_path / name).is_file(), name
