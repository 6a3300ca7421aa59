"""Where the tests find the repository, the shared reference folder, the models and the built binary.
Each can be overridden by the environment (CTest sets BHMOE_SHARED_DIR, BHMOE_MODELS_DIR and
BHMOE_BINARY)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("BHMOE_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
MODELS = os.environ.get("BHMOE_MODELS_DIR", os.path.join(ROOT, "models"))
BUNDLED = os.path.join(MODELS, "bhmoe-tiny-moe")
GOLDEN = os.path.join(SHARED, "golden", "tiny-f32")
OLMOE_CALIBRATION = os.path.join(SHARED, "calibration", "olmoe-1b-7b-0924.kde.json")
BINARY = os.environ.get("BHMOE_BINARY", os.path.join(ROOT, "build", "bhmoe"))
needs_binary = pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="needs the built bhmoe binary")
