"""Where the project's specification files live (the one source of truth).

In a checkout (an editable install, the tests) they are the repository's own openapi.yaml,
control-openapi.yaml and schemas/. An installed package (a wheel: `pip install <path or git
URL>`) carries copies in mock_server/_spec (symlinks to those files in the repository, which the
build follows). KIE_MOCK_SPEC_DIR overrides both.
"""

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _root() -> Path:
    if os.environ.get("KIE_MOCK_SPEC_DIR"):
        return Path(os.environ["KIE_MOCK_SPEC_DIR"])
    checkout = _PACKAGE.parent
    if (checkout / "openapi.yaml").is_file() and (checkout / "schemas").is_dir():
        return checkout
    return _PACKAGE / "_spec"


ROOT = _root()
OPENAPI = ROOT / "openapi.yaml"
CONTROL_OPENAPI = ROOT / "control-openapi.yaml"
SCHEMAS = ROOT / "schemas"
MODEL_LIMITS = SCHEMAS / "model-limits.json"
UPLOAD_COVER_REQUEST = SCHEMAS / "upload-cover-request.json"
