#!/usr/bin/env python3
"""Fit the calibrated part of the hardware presets from the micro-benchmark tables.

Reads ../shared/calibration/*.csv (see calibration/README.md) and writes two generated files,
configs/hardware/calibrated_2201.yaml and configs/hardware/calibrated_3510.yaml, which the
hand-written arch presets (arch2201.yaml, arch3510.yaml) extend. Standard library only; the
output is a pure function of the CSV files (no timestamps, fixed ordering).

What is fitted:

  paths.<path>.{startup_cycles, curve}   from transfer_bw.csv (bytes-indexed tables only).
      B/cycle_i = bandwidth_gib_s * 2^30 / (clock * 1e6), clock = 1800 MHz for the 910b1/910b3
      tables (the clock the tables themselves reveal, calibration/README.md) and 1650 for 910_95.
      Measured cycles c_i = bytes_i / B/cycle_i. Start-up L = the largest start-up for which no
      data phase would beat the path's theoretical rate R (HARDWARE.md): min_i (c_i - bytes_i / R),
      clamped to [0, 0.9 * min c_i], rounded down to 0.1 cycle. Curve point r_i =
      bytes_i / (c_i - L) (data-phase rate), 4 significant digits. The simulator charges
      L + B / rate(B), with rate(B) linear between curve points and clamped outside.
  aic.cube.{mmad_head_latency_cycles, mmad_issue_cycles}   from mmad_model.csv (official head) and mmad.csv
      (the per-instruction cost minimising the worst relative error over the back-to-back sweep).
  mte.issue_gap_cycles, hbm.efficiency, l2.aggregate_bw_gbs   from transfer_multicore.csv; the L2
      rate uses the serial hit/miss model of the data_copy sample (time = hits / B_L2 + misses /
      B_HBM) with B_HBM from the no-reuse scenario 3.

Fit quality printed per path: the maximum relative error, over the table's points, of
  - the curve model (L + B / r(B), with the rounded L and r_i that are written), and
  - the 2-parameter model L + B / R, with the same L and R the least-squares rate through that
    fixed intercept (what the path would cost with a single flat rate instead of the curve).

Usage: python3 tools/fit_calibration.py [--calibration DIR] [--out DIR]
"""

import argparse
import csv
import math
import os
import statistics
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Clock used to turn the msKPP GiB/s values into bytes/cycle (calibration/README.md: the 910b
# tables reveal 1800 MHz, msKPP converts at 1850; 910_95 tables use 1650).
TABLE_CLOCK_MHZ = {"910b1": 1800.0, "910b3": 1800.0, "910_95": 1650.0}

# Theoretical bytes/cycle per path (HARDWARE.md "Data paths"; estimate where it says so).
THEORY_BPC = {
    "2201": {"gm_to_l1": 256, "gm_to_l1_nd2nz": 256, "gm_to_ub": 128, "gm_to_l0a": 128, "gm_to_l0b": 128,
             "l1_to_l0a": 256, "l1_to_l0b": 128, "l1_to_bt": 32, "l1_to_fb": 32, "l0c_to_gm": 128,
             "l0c_to_gm_nz2nd": 128, "ub_to_gm": 64, "ub_to_ub": 256},
    "3510": {"gm_to_l1": 256, "gm_to_ub": 128, "l0c_to_gm": 128, "l0c_to_l1": 128, "l0c_to_ub": 128,
             "l1_to_l0a": 256, "l1_to_l0b": 256, "l1_to_ub": 128, "ub_to_l1": 128, "ub_to_gm": 64},
}

# (config path, chip, calibration path label, extra comment)
PATH_TABLES = {
    "2201": [
        ("gm_to_l1", "910b3", "GM->L1",
         "910b1 table is an identical copy"),
        ("gm_to_l1_nd2nz", "910b1", "GM->L1 (ND->NZ)",
         "non-monotonic: peaks at multiples of 32 KB"),
        ("gm_to_ub", "910b3", "GM->UB",
         "CONFLICT: the 910b1 table plateaus at ~45 B/cycle; the 910b3 table (used) agrees with "
         "ini l2_rate=110"),
        ("gm_to_l0a", "910b3", "GM->L0A", "910b1 table is repeat-indexed (not used)"),
        ("gm_to_l0b", "910b3", "GM->L0B", "910b1 table is repeat-indexed (not used)"),
        ("l1_to_l0a", "910b1", "L1->L0A",
         "bytes-indexed rows only (repeat-indexed rows skipped); asc-devkit load_data_perf gives "
         "256 B/cycle + 28 cycles latency (path_latency.csv); this table implies a start-up of only a few cycles"),
        ("l1_to_l0b", "910b1", "L1->L0B",
         "bytes-indexed rows only (repeat-indexed rows skipped); asc-devkit load_data_perf gives "
         "128 B/cycle + 28 cycles latency (path_latency.csv); this table implies a start-up of only a few cycles"),
        ("l1_to_bt", "910b1", "L1->BT", "load_data_perf: 32 B/cycle + 20 cycles latency (path_latency.csv)"),
        ("l1_to_fb", "910b1", "L1->FB", "load_data_perf: 32 B/cycle + 20 cycles latency (path_latency.csv)"),
        ("l0c_to_gm", "910b1", "L0C->GM", "PyPTO fitted start-up ~248 cycles (HARDWARE.md)"),
        ("l0c_to_gm_nz2nd", "910b1", "L0C->GM (NZ->ND)", ""),
        ("ub_to_gm", "910b1", "UB->GM", "PyPTO fitted GM<->UB start-up ~233 cycles (HARDWARE.md)"),
        ("ub_to_ub", "910b3", "UB->UB", "910b1 table is an identical copy"),
    ],
    "3510": [
        ("gm_to_l1", "910_95", "GM->L1", "11 points, 1-32 KB; dips at 20 KB"),
        ("gm_to_ub", "910_95", "GM->UB", "11 points, 1-32 KB; dips at 20 KB"),
        ("l0c_to_gm", "910_95", "L0C->GM", "11 points, 1-32 KB; dips at 20 KB"),
        ("l0c_to_l1", "910_95", "L0C->L1",
         "CONFLICT: this table is identical to the L1->L0A/L1->L0B tables (copied) and plateaus at "
         "~256 B/cycle, while fixpipe_perf gives 128 B/cycle (fp32->fp16) + 26 cycles latency "
         "(path_latency.csv); the msKPP table is used here"),
        ("l0c_to_ub", "910_95", "L0C->UB",
         "identical to the L1->UB/UB->L1 tables (copied); fixpipe_perf: 128 B/cycle + 26 cycles latency"),
        ("l1_to_l0a", "910_95", "L1->L0A",
         "identical to L1->L0B and L0C->L1 (copied); load_data_perf: 256 B/cycle + 30 cycles latency"),
        ("l1_to_l0b", "910_95", "L1->L0B",
         "identical to L1->L0A and L0C->L1 (copied); load_data_perf: 256 B/cycle + 30 cycles latency"),
        ("l1_to_ub", "910_95", "L1->UB", "identical to L0C->UB and UB->L1 (copied)"),
        ("ub_to_l1", "910_95", "UB->L1", "identical to L0C->UB and L1->UB (copied)"),
        ("ub_to_gm", "910_95", "UB->GM", "11 points, 1-32 KB; dips at 20 KB"),
        # L1->GM (L1_TO_GM_91095) is skipped on purpose: the 3510 documents say the path was removed.
    ],
}

ARCH = {
    "2201": {
        "mmad_arch": "dav-2201",
        "mmad_sweep_chip": "910b1",   # back-to-back (pipelined) sweep, overhead ~2-3 cycles
        "mmad_check_chip": "910b3",   # single-instruction sweep, overhead ~23-25 cycles
        "multicore_chip": "Atlas A2/A3",
        "multicore_clock_mhz": 1800.0,
        "hbm_peak_gbs": 1600.0,
    },
    "3510": {
        "mmad_arch": "dav-3510",
        "mmad_sweep_chip": "910_95",
        "mmad_check_chip": None,
        "multicore_chip": "Ascend 950PR",
        "multicore_clock_mhz": 1650.0,
        "hbm_peak_gbs": 1600.0,
    },
}


def read_csv(cal_dir, name):
    path = os.path.join(cal_dir, name)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def sig(x, digits=4):
    """x rounded to `digits` significant digits."""
    return float("%.*g" % (digits, x))


def num(x):
    """Plain decimal text for a float (no exponent, no trailing zeros)."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    s = "%.6f" % x
    return s.rstrip("0").rstrip(".")


def pct(x):
    return "%.2f%%" % (100.0 * x)


def least_squares(xs, ys):
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    return my - slope * mx, slope


def fit_path(rows, chip, theory):
    clock = TABLE_CLOCK_MHZ[chip]
    pts = sorted((int(r["bytes"]), float(r["bandwidth_gib_s"])) for r in rows)
    bs = [b for b, _ in pts]
    bpc = [g * 2 ** 30 / (clock * 1e6) for _, g in pts]
    cyc = [b / r for b, r in zip(bs, bpc)]
    intercept = min(c - b / theory for b, c in zip(bs, cyc))
    lo, hi = 0.0, 0.9 * min(cyc)
    startup = math.floor(min(max(intercept, lo), hi) * 10) / 10
    curve = [(b, sig(b / (c - startup))) for b, c in zip(bs, cyc)]
    # Curve model as written (rounded L and r_i).
    curve_err = max(abs(startup + b / r - c) / c for (b, r), c in zip(curve, cyc))
    # 2-parameter model: same L, least-squares rate through that intercept.
    slope = sum(b * (c - startup) for b, c in zip(bs, cyc)) / sum(b * b for b in bs)
    flat_rate = 1.0 / slope
    flat_err = max(abs(startup + b * slope - c) / c for b, c in zip(bs, cyc))
    r_max_bytes, r_max = max(curve, key=lambda pt: pt[1])
    return {
        "r_min": min(r for _, r in curve),
        "r_max": r_max,
        "r_max_bytes": r_max_bytes,
        "clock": clock,
        "n": len(bs),
        "intercept": intercept,
        "clamp_hi": hi,
        "startup": startup,
        "curve": curve,
        "curve_err": curve_err,
        "flat_rate": flat_rate,
        "flat_err": flat_err,
        "plateau_bpc": bpc[-1],
        "bytes_range": (bs[0], bs[-1]),
    }


def fit_paths(cal_dir, arch):
    rows = read_csv(cal_dir, "transfer_bw.csv")
    out = []
    for key, chip, label, remark in PATH_TABLES[arch]:
        sel = [r for r in rows if r["chip"] == chip and r["path"] == label and r["bytes"].strip()]
        if not sel:
            sys.exit("fit_calibration: no bytes-indexed rows for %s %s" % (chip, label))
        table_keys = sorted({r["table_key"] for r in sel})
        if len(table_keys) != 1:
            sys.exit("fit_calibration: %s %s spans tables %s" % (chip, label, table_keys))
        fit = fit_path(sel, chip, THEORY_BPC[arch][key])
        fit.update(key=key, chip=chip, label=label, table_key=table_keys[0], remark=remark)
        out.append(fit)
    return out


def fit_cube(cal_dir, arch):
    cfg = ARCH[arch]
    model = read_csv(cal_dir, "mmad_model.csv")
    heads = [r for r in model if r["arch"] == cfg["mmad_arch"] and r["interface"] == "Mmad"
             and r["dtype"].startswith("fp16") and r["head_latency_cycles"].strip()]
    if len(heads) != 1:
        sys.exit("fit_calibration: expected one fp16 Mmad row for %s in mmad_model.csv" % cfg["mmad_arch"])
    head = float(heads[0]["head_latency_cycles"])
    mmad = read_csv(cal_dir, "mmad.csv")
    sweep = [r for r in mmad if r["chip"] == cfg["mmad_sweep_chip"]]
    # Minimax fit: the per-instruction cost that keeps the worst relative error of
    # ideal + issue against the measured back-to-back cycles smallest.
    def worst(c):
        return max(abs(float(r["ideal_cycles"]) + c - float(r["cycles"])) / float(r["cycles"]) for r in sweep)
    issue = min((i / 100.0 for i in range(0, 501)), key=lambda c: (round(worst(c), 6), c))
    res = {
        "head": head,
        "head_row": "%s %s %s" % (cfg["mmad_arch"], heads[0]["interface"], heads[0]["dtype"]),
        "issue": issue,
        "sweep_key": sweep[0]["table_key"],
        "sweep_n": len(sweep),
        "check": None,
    }
    if cfg["mmad_check_chip"]:
        single = [r for r in mmad if r["chip"] == cfg["mmad_check_chip"]]
        errs = []
        for r in single:
            model_cycles = head + issue + float(r["ideal_cycles"])
            errs.append((abs(model_cycles - float(r["cycles"])) / float(r["cycles"]), r))
        worst, wr = max(errs, key=lambda e: e[0])
        res["check"] = {
            "key": single[0]["table_key"],
            "n": len(single),
            "max_err": worst,
            "worst": "m=%s n=%s k=%s cycles=%s" % (wr["m"], wr["n"], wr["k"], wr["cycles"]),
            "ok": worst <= 0.10,
        }
    return res


def fit_multicore(cal_dir, arch):
    cfg = ARCH[arch]
    rows = read_csv(cal_dir, "transfer_multicore.csv")

    def row(scenario):
        sel = [r for r in rows if r["chip"].startswith(cfg["multicore_chip"])
               and r["path"].startswith("GM->UB (DataCopyPad") and r["scenario"] == scenario]
        if len(sel) != 1:
            sys.exit("fit_calibration: expected one GM->UB scenario %s row for %s" % (scenario, cfg["multicore_chip"]))
        r = sel[0]
        # effective_read_bw_gb_s is bytes_moved / pipe_time_us; recompute as a consistency check.
        recomputed = float(r["bytes_moved"]) / float(r["pipe_time_us"]) / 1e3
        if abs(recomputed - float(r["effective_read_bw_gb_s"])) > 0.01 * recomputed:
            sys.exit("fit_calibration: scenario %s effective_read_bw_gb_s inconsistent" % scenario)
        return r

    s1, s3, s6 = row("1"), row("3"), row("6")
    clock = cfg["multicore_clock_mhz"]
    copies_per_core = float(s1["bytes_moved"]) / (float(s1["bytes_per_copy"]) * float(s1["cores_used"]))
    gap = round(float(s1["pipe_time_us"]) * clock / copies_per_core, 2)
    eff_raw = float(s3["effective_read_bw_gb_s"]) / cfg["hbm_peak_gbs"]
    eff = round(min(eff_raw, 1.0), 3)
    # Serial hit/miss model: scenario 6 time = hit bytes / B_L2 + miss bytes / B_HBM.
    hit = float(s6["l2_hit_rate"].rstrip("%")) / 100.0
    moved = float(s6["bytes_moved"])
    miss_us = (1.0 - hit) * moved / (float(s3["effective_read_bw_gb_s"]) * 1e3)
    l2 = round(hit * moved / ((float(s6["pipe_time_us"]) - miss_us) * 1e3), 1)
    return {
        "chip": s1["chip"],
        "clock": clock,
        "s1": s1, "s3": s3, "s6": s6,
        "copies_per_core": copies_per_core,
        "gap": gap,
        "eff_raw": eff_raw,
        "eff": eff,
        "eff_capped": eff_raw > 1.0,
        "peak": cfg["hbm_peak_gbs"],
        "l2": l2,
    }


def render(arch, paths, cube, mc):
    L = []
    keys = ", ".join(p["table_key"] for p in paths)
    L.append("# GENERATED by tools/fit_calibration.py -- do not edit by hand; rerun the script instead:")
    L.append("#   python3 tools/fit_calibration.py [--calibration DIR]")
    L.append("# Inputs (calibration/, see its README.md):")
    L.append("#   transfer_bw.csv tables: %s" % keys)
    L.append("#   mmad_model.csv (%s head), mmad.csv %s (%s issue)" % (
        cube["head_row"], cube["sweep_key"], "median overhead"))
    L.append("#   transfer_multicore.csv %s GM->UB (DataCopyPad) scenarios 1, 3, 6" % mc["chip"])
    L.append("# Paths: cycles = startup_cycles + bytes / rate(bytes); the curve gives the data-phase rate")
    L.append("# (B/cycle), linear between points and clamped outside. Table clock: %s MHz." % num(paths[0]["clock"]))
    L.append("# Fit error = max relative error over the table's points; '2-param' = startup + bytes/R")
    L.append("# with one least-squares rate R instead of the curve.")
    L.append("")
    L.append("paths:")
    for p in paths:
        L.append("  # %s <- transfer_bw.csv %s (%d points, %d..%d B, clock %s MHz); fitted." % (
            p["label"], p["table_key"], p["n"], p["bytes_range"][0], p["bytes_range"][1], num(p["clock"])))
        L.append("  # fit error: curve model %s; 2-param model %s (R = %s B/cycle)." % (
            pct(p["curve_err"]), pct(p["flat_err"]), num(round(p["flat_rate"], 1))))
        L.append("  # data-phase rate range %s..%s B/cycle (max at %d B); last measured point %s B/cycle incl. start-up." % (
            num(p["r_min"]), num(p["r_max"]), p["r_max_bytes"], num(round(p["plateau_bpc"], 1))))
        if p["remark"]:
            L.append("  # note: %s" % p["remark"])
        L.append("  %s:" % p["key"])
        how = "min(c_i - bytes_i / %s B/cycle theoretical) = %s" % (num(THEORY_BPC[arch][p["key"]]), num(round(p["intercept"], 1)))
        if p["startup"] != round(p["intercept"], 1):
            how += ", clamped to [0, %s]" % num(round(p["clamp_hi"], 1))
        L.append("    startup_cycles: %s   # fitted: %s %s" % (num(p["startup"]), p["table_key"], how))
        L.append("    curve:   # fitted: %s, [bytes, data-phase B/cycle]" % p["table_key"])
        for b, r in p["curve"]:
            L.append("      - [%d, %s]" % (b, num(r)))
    L.append("")
    L.append("aic:")
    L.append("  cube:")
    L.append("    mmad_head_latency_cycles: %s   # official: mmad_model.csv %s head_latency_cycles (asc-devkit mmad_perf)" % (
        num(cube["head"]), cube["head_row"]))
    L.append("    mmad_issue_cycles: %s   # fitted: minimax relative error of ideal + issue vs mmad.csv %s (%d rows, back-to-back issue)" % (
        num(cube["issue"]), cube["sweep_key"], cube["sweep_n"]))
    L.append("")
    s1, s3, s6 = mc["s1"], mc["s3"], mc["s6"]
    L.append("mte:")
    L.append("  issue_gap_cycles: %s   # fitted: transfer_multicore.csv %s GM->UB scenario 1 (%s, %s B/copy, %s cores):"
             % (num(mc["gap"]), mc["chip"], s1["tile"], s1["bytes_per_copy"], s1["cores_used"]))
    L.append("  #   pipe_time_us %s x %s MHz / %s copies per core" % (
        s1["pipe_time_us"], num(mc["clock"]), num(mc["copies_per_core"])))
    L.append("")
    L.append("hbm:")
    if mc["eff_capped"]:
        L.append("  efficiency: %s   # fitted: transfer_multicore.csv %s GM->UB scenario 3 (%s) %s GB/s / peak %s GB/s = %s;"
                 % (num(mc["eff"]), mc["chip"], s3["tile"], s3["effective_read_bw_gb_s"], num(mc["peak"]), "%.3f" % mc["eff_raw"]))
        L.append("  #   CONFLICT: the measurement exceeds the nominal %s GB/s peak; capped at 1.0" % num(mc["peak"]))
    else:
        L.append("  efficiency: %s   # fitted: transfer_multicore.csv %s GM->UB scenario 3 (%s) %s GB/s / peak %s GB/s"
                 % (num(mc["eff"]), mc["chip"], s3["tile"], s3["effective_read_bw_gb_s"], num(mc["peak"])))
    L.append("")
    L.append("l2:")
    L.append("  aggregate_bw_gbs: %s   # fitted: transfer_multicore.csv %s GM->UB scenario 6 (%s us, L2 hit rate %s) with the"
             % (num(mc["l2"]), mc["chip"], s6["pipe_time_us"], s6["l2_hit_rate"]))
    L.append("  #   serial model time = hits / B_L2 + misses / B_HBM, B_HBM = scenario 3's %s GB/s" % s3["effective_read_bw_gb_s"])
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", default=os.path.join(REPO_ROOT, "..", "shared", "calibration"),
                    help="calibration folder (default: ../shared/calibration beside the repo)")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "configs", "hardware"),
                    help="where to write calibrated_<arch>.yaml (default: configs/hardware)")
    args = ap.parse_args()
    cal = os.path.normpath(args.calibration)
    failed = False
    for arch in ("2201", "3510"):
        paths = fit_paths(cal, arch)
        cube = fit_cube(cal, arch)
        mc = fit_multicore(cal, arch)
        print("== arch %s ==" % arch)
        print("%-16s %-24s %4s %9s %9s %11s %9s %9s %9s" % (
            "path", "table", "n", "LS icpt", "startup", "curve err", "R B/cyc", "2p err", "max r"))
        for p in paths:
            print("%-16s %-24s %4d %9.1f %9s %11s %9.1f %9s %9s" % (
                p["key"], p["table_key"], p["n"], p["intercept"], num(p["startup"]),
                pct(p["curve_err"]), p["flat_rate"], pct(p["flat_err"]), num(p["r_max"])))
        print("cube: head %s, issue %s (minimax over %d rows of %s)" % (
            num(cube["head"]), num(cube["issue"]), cube["sweep_n"], cube["sweep_key"]))
        if cube["check"]:
            c = cube["check"]
            print("cube check: head+issue+ideal vs %s (%d single-instruction rows): max rel err %s at %s -> %s" % (
                c["key"], c["n"], pct(c["max_err"]), c["worst"], "OK (<= 10%)" if c["ok"] else "FAIL (> 10%)"))
            failed = failed or not c["ok"]
        print("mte.issue_gap_cycles %s; hbm.efficiency %s (raw %.3f%s); l2.aggregate_bw_gbs %s" % (
            num(mc["gap"]), num(mc["eff"]), mc["eff_raw"], ", CONFLICT: above peak, capped" if mc["eff_capped"] else "",
            num(mc["l2"])))
        text = render(arch, paths, cube, mc)
        out = os.path.join(args.out, "calibrated_%s.yaml" % arch)
        with open(out, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print("wrote %s" % os.path.relpath(out, REPO_ROOT))
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
