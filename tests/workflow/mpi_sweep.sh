#!/usr/bin/env bash
# The MPI sweep gives the single-process result: runs tests/workflow/data/small_sweep.yaml once in
# one process and once with `mpirun -n 3 ... --mpi` (rank 0 coordinates, two workers), then compares
# report.json without wall-clock fields, the resolved sweep and the point folders.
# Usage: mpi_sweep.sh NPUSIM MPIEXEC SOURCE_DIR WORK_DIR
set -euo pipefail
npusim=$1 mpiexec=$2 src=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
cd "$src"
sweep=tests/workflow/data/small_sweep.yaml

"$npusim" sweep "$sweep" --out "$work/single" > "$work/single.txt" 2>&1
# Containers often forbid the cross-memory-attach copy OpenMPI's shared-memory transport tries first.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
"$mpiexec" --oversubscribe --allow-run-as-root -n 3 "$npusim" sweep "$sweep" --out "$work/mpi" --mpi \
  > "$work/mpi.txt" 2>&1 || { cat "$work/mpi.txt"; exit 1; }

cmp "$work/single/sweep.yaml" "$work/mpi/sweep.yaml"
cmp "$work/single/report.csv" "$work/mpi/report.csv"
diff <(ls "$work/single/points") <(ls "$work/mpi/points")
/usr/bin/python3 - "$work/single/report.json" "$work/mpi/report.json" <<'PY'
import json, sys
def drop_wall(x):
    if isinstance(x, dict):
        return {k: drop_wall(v) for k, v in x.items() if "wall" not in k}
    if isinstance(x, list):
        return [drop_wall(v) for v in x]
    return x
a, b = (drop_wall(json.load(open(f))) for f in sys.argv[1:3])
if a != b:
    sys.exit("the MPI sweep's report.json differs from the single-process one")
if len(a["points"]) != 6:
    sys.exit(f"expected 6 points, found {len(a['points'])}")
PY
grep -q "on 3 MPI ranks" "$work/mpi.txt" || { cat "$work/mpi.txt"; echo "rank 0 did not coordinate 3 ranks"; exit 1; }
echo "MPI sweep on 3 ranks == single-process sweep"
