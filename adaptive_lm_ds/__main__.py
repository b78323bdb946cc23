"""``python -m adaptive_lm_ds PROGRAM [ARGS]``: run one of :data:`adaptive_lm_ds.cli.PROGRAMS` by name.

The way to launch a program's ranks without its entry point script on ``PATH``, e.g.
``torchrun --nproc_per_node 4 -m adaptive_lm_ds adaptive-lm-write-layout ...``.
"""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: python -m adaptive_lm_ds PROGRAM [ARGS]; PROGRAM is one of: {', '.join(cli.PROGRAMS)}")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    sys.exit(cli.run(sys.argv[1], sys.argv[2:]))
