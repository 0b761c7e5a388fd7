"""Where the project's specification files live (the one source of truth)."""

import os
from pathlib import Path

ROOT = Path(os.environ.get("KIE_MOCK_SPEC_DIR") or Path(__file__).resolve().parent.parent)
OPENAPI = ROOT / "openapi.yaml"
CONTROL_OPENAPI = ROOT / "control-openapi.yaml"
SCHEMAS = ROOT / "schemas"
MODEL_LIMITS = SCHEMAS / "model-limits.json"
UPLOAD_COVER_REQUEST = SCHEMAS / "upload-cover-request.json"
