#!/bin/bash
# The accelerator command, as the device tool runs it on a bare GPU machine
# (no network, no TensorFlow/seqio/clu, no gin-config): gin-config travels as
# its pure-Python wheel (`pip download gin-config --no-deps -d .device_wheels`
# here, then `carry: [".device_wheels"]`), put on the path as a zip, and the
# package is used from the source tree. Prints the table and the JSON rows.
#
#   bash bench/on_device.sh                 # default rows (Base, then XXL)
#   bash bench/on_device.sh --size base     # other flags: bench/accelerator.py
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=$(ls .device_wheels/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH="$PWD:${WHEELS}${PYTHONPATH:-}"
python3 -c "import jax; print(jax.devices(), jax.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout "${PT_BENCH_TIMEOUT:-480}" python3 bench/accelerator.py "$@"
