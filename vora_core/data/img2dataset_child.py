"""Run `img2dataset.download` with the arguments in a JSON file: `python -m vora_core.data.img2dataset_child ARGS`.

img2dataset starts its own process pool with the spawn method; started from an importable module
without this `__main__` guard, the parent hangs forever. The download stage runs this as a child in
its own process group, with a hard timeout that kills the whole group; and should that caller be
killed outright (`kill -9`), the group kills itself (`die_with_group_when_orphaned`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time


def die_with_group_when_orphaned(poll_s: float = 0.5) -> None:
    """SIGKILL this process group (this process and img2dataset's pool workers, which share it) as soon
    as the parent is gone: a parent-death signal would reach this process only, not its workers."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(args_path: str) -> None:
    if os.getpgrp() == os.getpid():  # the leader of its own group, as the download stage starts it
        die_with_group_when_orphaned()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    with open(args_path) as f:
        kwargs = json.load(f)
    download(**kwargs)


if __name__ == "__main__":
    main(sys.argv[1])
