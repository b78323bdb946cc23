"""Rank-side half of :func:`adaptive_lm_ds.testing.distributed.run_on_ranks`.

``python -m adaptive_lm_ds.testing._worker module:function WORKDIR`` under a launcher: initialise
gloo from the launcher's environment, call the function with ``WORKDIR/kwargs.pkl``, write its
result to ``WORKDIR/rank{r}.pkl`` or its traceback to ``WORKDIR/rank{r}.err``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import traceback
from pathlib import Path


def main() -> int:
    target, workdir = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    try:
        import torch.distributed as dist

        from adaptive_lm_ds import ds_runtime, parallel

        ds_runtime.load_shm_op()  # from the venv, under our build lock: a stale torch lock fails, never hangs
        parallel.init_process_group()  # the launcher's world, the accelerator's backend (gloo on CPU)
        module_name, qualname = target.split(":")
        fn = importlib.import_module(module_name)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        with open(workdir / "kwargs.pkl", "rb") as f:
            kwargs = pickle.load(f)
        result = fn(**kwargs)
        tmp = workdir / f"rank{rank}.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        tmp.rename(workdir / f"rank{rank}.pkl")
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        (workdir / f"rank{rank}.err").write_text(traceback.format_exc())
        return 1
    try:
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown after a good result must not mask it
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
