"""Writes events/imaging-request.schema.json from the ImagingRequest model (``make schema``)."""

import json
import sys
from pathlib import Path

from ami_factory.request import ImagingRequest

ROOT = Path(__file__).resolve().parents[1]


def schema_text() -> str:
    return json.dumps(ImagingRequest.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    target = ROOT / "events" / "imaging-request.schema.json"
    target.write_text(schema_text())
    print(f"wrote {target.relative_to(ROOT)}", file=sys.stderr)
