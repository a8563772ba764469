#!/usr/bin/python3
"""Checks a sweep's HDF5 report the way its users read it: h5py opens it, pandas builds a
DataFrame from each table (pd.DataFrame(f['points'][()])), and every attribute and cell must equal
the same sweep's JSON report (strings and integers exactly, floats as the same double, NaN as
null). Layout: docs/report-schema.md, "Sweep reports".

usage: h5_check.py REPORT.h5 REPORT.json    exit 0 ok, 1 mismatch, 77 h5py/pandas missing (skip)
"""
import json
import math
import sys

try:
    import h5py
    import numpy as np
    import pandas as pd
except ImportError as e:  # the CTest entry treats 77 as "skipped"
    print(f"skipped: {sys.executable} cannot import h5py/pandas/numpy ({e}); "
          "install python3-h5py and python3-pandas", file=sys.stderr)
    sys.exit(77)

METRICS = ["cycles", "time_us", "critical_path_us", "kernels", "flops", "tflops", "cube", "vector",
           "mte1", "mte2", "mte3", "fixpipe", "hbm_bw", "hbm_read_bytes", "hbm_write_bytes",
           "l2_hit_rate", "validation_passed"]
UNITS = ["cube", "vector", "mte1", "mte2", "mte3", "fixpipe", "hbm_bw"]
KERNEL_COLUMNS = (["point", "id", "kernel", "name", "op", "cycles", "time_us", "flops", "tflops",
                   "peak_fraction", "instructions", "hbm_read", "hbm_write", "l2_hit_rate"]
                  + UNITS + ["validation_passed"])

errors = []


def check(cond, what):
    if not cond:
        errors.append(what)
        if len(errors) <= 20:
            print("MISMATCH:", what, file=sys.stderr)


def same_float(a, b):
    """b from JSON: null is NaN."""
    if b is None:
        return isinstance(a, float) and math.isnan(a)
    return float(a) == float(b)


def text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def frame(f, name):
    check(name in f, f"/{name} is missing")
    data = f[name][()]
    check(data.ndim == 1 and data.dtype.names is not None, f"/{name} is not a 1-D compound table")
    df = pd.DataFrame(data)
    for col, dt in df.dtypes.items():  # fixed-length strings come as bytes
        if dt == object:
            df[col] = df[col].str.decode("utf-8")
    return df


def main(h5_path, json_path):
    with open(json_path, encoding="utf-8") as fp:
        ref = json.load(fp)
    with h5py.File(h5_path, "r") as f:
        attrs = f.attrs
        check(int(attrs["schema_version"]) == ref["schema_version"], "schema_version")
        for key in ["kind", "tool_version", "git_revision", "command_line", "sweep_yaml"]:
            check(text(attrs[key]) == ref[key], f"attribute {key}: {text(attrs[key])!r} != {ref[key]!r}")
        keys = text(attrs["key_columns"])
        check((keys.split(",") if keys else []) == ref["key_columns"], "key_columns")

        points = frame(f, "points")
        kernels = frame(f, "kernels")
        units = frame(f, "units")

    key_cols = ref["key_columns"]
    check(list(points.columns) == ["point", "id"] + key_cols + METRICS,
          f"/points columns {list(points.columns)}")
    check(list(kernels.columns) == KERNEL_COLUMNS, f"/kernels columns {list(kernels.columns)}")
    check(list(units.columns) == ["point", "kernel", "unit", "utilization"],
          f"/units columns {list(units.columns)}")
    for m in METRICS:
        check(points[m].dtype == np.float64, f"/points {m} is {points[m].dtype}, not float64")
    for c in ["point", "kernel", "cycles", "instructions", "hbm_read", "hbm_write"]:
        check(kernels[c].dtype == np.int64, f"/kernels {c} is {kernels[c].dtype}, not int64")

    check(len(points) == len(ref["points"]), f"{len(points)} point rows, JSON has {len(ref['points'])}")
    n_kernels = sum(len(p["report"]["kernels"]) for p in ref["points"])
    check(len(kernels) == n_kernels, f"{len(kernels)} kernel rows, JSON has {n_kernels}")
    check(len(units) == n_kernels * len(UNITS), f"{len(units)} unit rows for {n_kernels} kernels")

    row = 0
    for i, p in enumerate(ref["points"]):
        if i >= len(points):
            break
        r = points.iloc[i]
        check(r["point"] == i and r["id"] == p["id"], f"point {i} index/id")
        for c in key_cols:
            check(r[c] == p["keys"][c], f"point {i} key {c}: {r[c]!r} != {p['keys'][c]!r}")
        for m in METRICS:
            check(same_float(r[m], p["metrics"][m]), f"point {i} {m}: {r[m]!r} != {p['metrics'][m]!r}")
        for j, k in enumerate(p["report"]["kernels"]):
            if row >= len(kernels):
                break
            kr = kernels.iloc[row]
            where = f"point {i} kernel {j}"
            check(kr["point"] == i and kr["kernel"] == j and kr["id"] == p["id"], f"{where} index/id")
            check(kr["name"] == k["name"] and kr["op"] == k["op"], f"{where} name/op: {kr['name']!r}")
            for c in ["cycles", "instructions"]:
                check(int(kr[c]) == k[c], f"{where} {c}")
            for c in ["hbm_read", "hbm_write"]:
                check(int(kr[c]) == k["bytes"][c], f"{where} {c}")
            for c in ["time_us", "flops", "tflops", "peak_fraction"]:
                check(same_float(kr[c], k[c]), f"{where} {c}: {kr[c]!r} != {k[c]!r}")
            check(same_float(kr["l2_hit_rate"], k["bytes"]["l2_hit_rate"]), f"{where} l2_hit_rate")
            passed = (1.0 if k["validation"]["passed"] else 0.0) if "validation" in k else None
            check(same_float(kr["validation_passed"], passed), f"{where} validation_passed")
            for u, unit in enumerate(UNITS):
                check(same_float(kr[unit], k["utilization"][unit]), f"{where} {unit}")
                ur = units.iloc[row * len(UNITS) + u]
                check(ur["point"] == i and ur["kernel"] == j and ur["unit"] == unit
                      and same_float(ur["utilization"], k["utilization"][unit]), f"{where} /units {unit}")
            row += 1

    if errors:
        print(f"{len(errors)} mismatches between {h5_path} and {json_path}", file=sys.stderr)
        return 1
    print(f"ok: {len(points)} points, {len(kernels)} kernels, {len(units)} unit rows match {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
