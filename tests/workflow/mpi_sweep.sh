#!/usr/bin/env bash
# The MPI sweep gives the single-process result: runs tests/workflow/data/small_sweep.yaml once in
# one process and once with `mpirun -n 3 ... --mpi` (rank 0 coordinates, two workers), then compares
# byte for byte the resolved sweep, report.csv, report.h5 (the whole file: tables and attributes)
# and report.html, report.json and each point's report.json and config.yaml with only the
# wall_clock.seconds values masked, and each point's log.txt with only its time masked
# (docs/report-schema.md, "Reproducibility").
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

for f in sweep.yaml report.csv report.h5 report.html; do
  cmp "$work/single/$f" "$work/mpi/$f" || { echo "the MPI sweep's $f differs from the single-process one"; exit 1; }
done
diff <(ls -A "$work/single/points") <(ls -A "$work/mpi/points")
/usr/bin/python3 - "$work/single" "$work/mpi" <<'PY'
import json, os, re, sys
single, mpi = sys.argv[1:3]
wall = re.compile(r'("wall_clock": \{\s*"seconds": )[-+0-9.eE]+')
log_time = re.compile(r'^(status: \w+ \()[0-9.]+( s\))$', re.M)
def same(rel, mask):
    a, b = (mask(open(os.path.join(d, rel)).read()) for d in (single, mpi))
    if a != b:
        sys.exit(f"the MPI sweep's {rel} differs from the single-process one (wall-clock fields masked)")
same("report.json", lambda t: wall.sub(r"\g<1>0", t))
if not wall.search(open(os.path.join(mpi, "report.json")).read()):
    sys.exit("report.json has no wall_clock.seconds to mask: update this check")
points = sorted(os.listdir(os.path.join(single, "points")))
for p in points:
    same(f"points/{p}/config.yaml", lambda t: t)
    same(f"points/{p}/report.json", lambda t: wall.sub(r"\g<1>0", t))
    same(f"points/{p}/log.txt", lambda t: log_time.sub(r"\g<1>0\2", t))
if len(points) != 6 or len(json.load(open(os.path.join(mpi, "report.json")))["points"]) != 6:
    sys.exit(f"expected 6 points, found {len(points)}")
PY
grep -q "on 3 MPI ranks" "$work/mpi.txt" || { cat "$work/mpi.txt"; echo "rank 0 did not coordinate 3 ranks"; exit 1; }
echo "MPI sweep on 3 ranks == single-process sweep"
