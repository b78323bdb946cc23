#!/usr/bin/env bash
# Wheels the GPU device machine lacks (its image: Python 3.12, CUDA torch 2.11, no network; it has
# numpy, einops, tqdm, tensorboard, safetensors, msgpack, ninja, psutil, py-cpuinfo, packaging).
# Run here, once, from the repo root; then tools/bench_gpu.sh installs them from .whl/ there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
.venv/bin/pip wheel -q --no-deps -w .whl deepspeed==0.19.8          # an sdist on PyPI: build a pure wheel
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in megatron-core==0.16.1 hjson pydantic==2.* pydantic-core annotated-types typing-inspection; do
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLAT[@]}" -d .whl "$pkg"
done
# pydantic pins an exact pydantic-core: keep the one it asks for
want=$(unzip -p .whl/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\(.*\)$/\1/p')
for f in .whl/pydantic_core-*.whl; do [[ "$f" == *"-$want-"* ]] || rm -f "$f"; done
if ! ls .whl/pydantic_core-"$want"-*.whl >/dev/null 2>&1; then
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLAT[@]}" -d .whl "pydantic-core==$want"
fi
ls -la .whl && du -sh .whl
