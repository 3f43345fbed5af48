"""Run `img2dataset.download` with the arguments in a JSON file: `python -m vora_core.data.img2dataset_child ARGS`.

img2dataset starts its own process pool with the spawn method; started from an importable module
without this `__main__` guard, the parent hangs forever. The download stage runs this as a child in
its own process group, with a hard timeout that kills the whole group.
"""

from __future__ import annotations

import json
import os
import sys


def main(args_path: str) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    with open(args_path) as f:
        kwargs = json.load(f)
    download(**kwargs)


if __name__ == "__main__":
    main(sys.argv[1])
