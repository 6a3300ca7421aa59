"""The README's Python examples run as documented."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from paths import ROOT, SHARED  # noqa: E402

ENV = dict(os.environ)  # PYTHONPATH: the built package (build/python), as CTest sets it


def run(*args):
    return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, env=ENV).stdout


def test_route_npy():
    out = run(os.path.join(ROOT, "examples", "route_npy.py"),
              os.path.join(SHARED, "routing-cases", "boosted_seed42.logits.npy"),
              os.path.join(SHARED, "calibration", "olmoe-1b-7b-0924.kde.json"))
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("topk:k=8") and "mean experts 8.00" in lines[0]
    assert "bh:alpha=0.05,max_k=16" in lines[2]


def test_patch_torch():
    out = run(os.path.join(ROOT, "examples", "patch_torch.py"))
    assert "native top-8: NLL" in out and "BH alpha 0.05: NLL" in out


def test_score_rules(tmp_path):
    out = run(os.path.join(ROOT, "examples", "score_rules.py"), "--chars", "4000", "--plot", str(tmp_path / "q.png"))
    lines = [l for l in out.splitlines() if "experts/token" in l]
    assert len(lines) == 7 and lines[0].startswith("topk:k=1") and " 1.00 experts/token" in lines[0]
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "q.png").stat().st_size > 1000
    except ImportError:
        assert "no plot" in out
