"""What the tiny-checkpoint scripts share: build a folder once, and again only when its build parameters
change (a stamp in the folder holds them)."""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_once(out: Path, key: dict[str, Any], build: Callable[[Path], None], what: str, force: bool = False,
               stamp_name: str = "tiny.stamp.json") -> None:
    """`build(out)` into an emptied `out`, unless the stamp there says it was built with `key`."""
    stamp = out / stamp_name
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == key:
        print(f"{out} is up to date", file=sys.stderr)
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"building {what} in {out}", file=sys.stderr)
    build(out)
    stamp.write_text(json.dumps(key))
    print("done", file=sys.stderr)
