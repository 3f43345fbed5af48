"""Entry point of one training rank: `python -m vora_core.train.worker --spec SPEC.json` (under torchrun,
or alone for a world of one).

Exit codes: 0 done, 3 diverged (too many non-finite steps), 1 any other error. Rank 0 writes the
run's stats to `<out_dir>/run_stats.json`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from vora_core.errors import VoraError

EXIT_DIVERGED = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="RunSpec JSON written by vora_core.train.launch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vora_core.train.launch import die_with_parent

    die_with_parent()  # torchrun's agent (or, alone, the stage) killed → this rank goes too
    import vora_core  # noqa: F401  (registers the VoRA Auto classes)
    from vora_core.train.loop import TrainingDiverged, train
    from vora_core.train.spec import RunSpec
    from vora_core.workdir import atomic_write_json

    try:
        spec = RunSpec.load(args.spec)
        stats = train(spec)
    except TrainingDiverged as e:
        print(f"[train] DIVERGED: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except VoraError as e:
        print(f"[train] ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if stats is not None and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(Path(spec.out_dir) / "run_stats.json", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
