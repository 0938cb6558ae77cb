#!/usr/bin/env python3
"""The first GPU run in one command: set up, build for this GPU, run every gpu test, benchmark, summarise.

    make gpu-check GPU_CHECK_OUT=gpu-check-results      # or
    python3 scripts/gpu_check.py gpu-check-results

On a Linux machine with one NVIDIA GPU (driver installed, network for pip):
  1. device: name, driver, compute capability (nvidia-smi);
  2. setup: the Makefile's venv (``make setup``), then the extension rebuilt in
     place for this GPU only (TORCH_CUDA_ARCH_LIST from its compute capability,
     MAX_JOBS = the cores), and a check that it carries CUDA kernels;
  3. tests: every ``gpu``-marked test (``pytest -m gpu``, junit XML);
  4. bench: ``python -m eitp_kernels.bench --quick --device cuda --no-compile``
     (JSON and table; each row's % of the copy bandwidth measured in the same
     run; the torch.compile baseline is left to ``make bench``: its compiles
     alone would take minutes);
  5. profile: ``python -m eitp_kernels.bench.profile`` on the cases the first
     GPU results left short (Barlow Twins, coherence, entropy, fp16 min/max):
     each backend's kernels by GPU time, in ``profile/profile-cuda.txt``;
  6. summary: ``gpu_check.json`` and ``gpu_check.txt`` in the output folder
     (device, driver, versions, each step's time and outcome, every test
     outcome, every benchmark row), with the raw logs beside them.
Progress is printed as it goes. Each step has a time limit so the whole run
stays within 9 minutes on an H100/H200-class machine with 16 cores (pip
downloads excluded); a step that fails or times out is recorded and the
later steps still run where they can.

``--python PATH`` uses an interpreter that already has torch (and triton) instead
of the venv: the setup step is left out and the extension is built in place for
it. For a GPU machine without network access (no pip), e.g.
``python3 scripts/gpu_check.py --python python3 out``.

``--dry-run`` exercises the same steps on a machine without a GPU: no setup or
build (the running Python is used), the gpu tests are collected and skipped,
and a small CPU benchmark stands in, so the summary writing is tested
(tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Time limits per step: build + backends + tests + bench + profile <= 7.5 min, leaving 1.5 of the 9 minutes
# for `make setup` with pip's wheels cached; a first setup that downloads torch may take longer (its limit).
STEP_LIMITS_S = {"setup": 600, "build": 120, "backends": 30, "tests": 150, "bench": 60, "profile": 90}
DRY_RUN_SLOWDOWN = 5  # a dry run happens on a CPU box (CI: 2 shared cores), not the 16-core GPU machine
DRY_RUN_BENCH = ["--quick", "--device", "cpu", "--no-compile", "--ops", "finite_minmax"]
# The cases the first GPU run (benchmarks/RESULTS.md, H200) left behind their baselines.
PROFILE_ARGS = ["--device", "cuda", "--ops", "coherence_loss,histogram_entropy,finite_minmax",
                "--cases", "BT 4096x2048,BT 2048x1024 fwd,2048x1024 fwd+bwd fp32,16M fp32,16M fp16"]
DRY_RUN_PROFILE = ["--device", "cpu", "--quick", "--ops", "finite_minmax", "--cases", "fp32", "--calls", "2"]


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_step(name: str, cmd: list[str], out_dir: str, limit_s: float, env: dict | None = None) -> dict:
    """Run one command with a time limit, its output to <out_dir>/<name>.log; the step's record."""
    path = os.path.join(out_dir, f"{name}.log")
    log(f"{name}: {' '.join(cmd)}  (limit {limit_s:.0f} s, log {path})")
    start = time.time()
    with open(path, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=limit_s,
                                  env={**os.environ, **(env or {})})
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit_s:.0f} s"
        except OSError as error:
            status = f"could not start: {error}"
    seconds = round(time.time() - start, 1)
    log(f"{name}: {status} in {seconds} s")
    return {"step": name, "command": cmd, "status": status, "seconds": seconds, "log": os.path.basename(path),
            "log_tail": _tail(path) if status != "ok" else ""}


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- device


def query_device() -> dict:
    """Name, driver, memory and compute capability from nvidia-smi; {} without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return {}
    name, driver, memory, cap = [field.strip() for field in lines[0].split(",")][:4]
    return {"name": name, "driver": driver, "memory": memory, "compute_capability": cap, "count": len(lines)}


def arch_list(compute_capability: str) -> str:
    """TORCH_CUDA_ARCH_LIST for exactly this GPU (e.g. "9.0")."""
    major, _, minor = compute_capability.partition(".")
    return f"{int(major)}.{int(minor or 0)}"


# ---------------------------------------------------------------- results


def parse_junit(path: str) -> list[dict]:
    """Every test case of a junit XML file: name, outcome (passed/failed/error/skipped), seconds, message."""
    if not os.path.exists(path):
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0][:300] if message else ""
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append({"test": name, "outcome": outcome, "seconds": round(float(case.get("time") or 0), 3),
                      "message": message})
    return cases


def parse_bench(folder: str) -> tuple[list[dict], list[dict]]:
    """(headers, rows) of every benchmark JSON under ``folder`` (``{"header": {...}, "rows": [...]}``)."""
    headers, rows = [], []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
        try:
            with open(path) as f:
                document = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict):
            continue
        header = document.get("header") or {}
        headers.append({"file": os.path.relpath(path, folder), **header})
        for row in document.get("rows") or []:
            if isinstance(row, dict):
                rows.append({"file": os.path.relpath(path, folder), "copy_gbps": header.get("copy_gbps"), **row})
    return headers, rows


def summarise(out_dir: str, summary: dict) -> None:
    """Write gpu_check.json and gpu_check.txt."""
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    with open(os.path.join(out_dir, "gpu_check.txt"), "w") as f:
        f.write(render_text(summary))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_text(summary: dict) -> str:
    device = summary.get("device") or {}
    dry = "DRY RUN (no GPU)" if summary.get("dry_run") else ""
    lines = [f"eitp_kernels gpu-check  {summary.get('started', '')}  {dry}",
             f"device   {device.get('name', 'none')}  driver {device.get('driver', '-')}  "
             f"compute capability {device.get('compute_capability', '-')}  memory {device.get('memory', '-')}",
             f"host     {summary.get('host', '')}",
             f"arch     TORCH_CUDA_ARCH_LIST={summary.get('arch_list', '-')}",
             f"versions {summary.get('versions', {})}",
             f"result   {summary.get('result', '')}  ({summary.get('seconds', 0)} s)", "", "steps"]
    for step in summary.get("steps", []):
        lines.append(f"  {step['step']:<8} {step['status']:<28} {step['seconds']:>7.1f} s  {step.get('log', '')}")
    tests = summary.get("tests", [])
    counts = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    lines += ["", f"tests ({len(tests)}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"]
    for t in tests:
        lines.append(f"  {t['outcome']:<8} {t['seconds']:>8.2f} s  {t['test']}" + (f"  -- {t['message']}" if
                                                                                   t["message"] and
                                                                                   t["outcome"] != "passed" else ""))
    rows = summary.get("bench_rows", [])
    copies = sorted({h.get("copy_gbps") for h in summary.get("bench_headers", []) if h.get("copy_gbps")})
    lines += ["", f"benchmark ({len(rows)} rows; copy bandwidth {copies} GB/s measured in the same run)",
              f"  {'op':<22} {'shape':<22} {'dtype':<10} {'backend':<10} {'median ms':>10} {'rate':>16} "
              f"{'% copy bw':>9}  check"]
    for r in rows:
        rate = "-" if r.get("rate") is None else f"{r['rate']:.1f} {r.get('rate_unit', '')}"
        lines.append(f"  {str(r.get('op', '')):<22} {str(r.get('shape', '')):<22} {str(r.get('dtype', '')):<10} "
                     f"{str(r.get('backend', '')):<10} {_fmt(r.get('median_ms'), '10.4f')} {rate:>16} "
                     f"{_fmt(r.get('pct_copy_bw'), '8.0f')}%  {r.get('check', '')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the run


def versions(python: str) -> dict:
    code = ("import json, torch; v = {'torch': torch.__version__, 'cuda': torch.version.cuda}\n"
            "try:\n import triton; v['triton'] = triton.__version__\nexcept ImportError: v['triton'] = None\n"
            "print(json.dumps(v))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for gpu_check.json, gpu_check.txt and the logs (created)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: skip setup/build, use this Python, a small CPU benchmark")
    parser.add_argument("--venv", default=os.environ.get("VENV", ".venv"), help="the Makefile's venv (default .venv)")
    parser.add_argument("--python", default=None,
                        help="an interpreter with torch already installed: no venv setup (no network needed)")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments for the gpu tests (e.g. '-n 8')")
    parser.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                        help=f"another time limit for a step (defaults: {STEP_LIMITS_S})")
    parser.add_argument("--tests", default="tests", help="test paths for pytest -m gpu (default: tests)")
    parser.add_argument("--bench-args", default=None, help="arguments for python -m eitp_kernels.bench "
                        "(default: --quick --device cuda --no-compile; dry run: a small CPU run)")
    parser.add_argument("--profile-args", default=None, help="arguments for python -m eitp_kernels.bench.profile "
                        "(default: the short GPU cases; dry run: a small CPU run)")
    args = parser.parse_args(argv)

    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    device = query_device()
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": args.dry_run, "device": device,
               "host": f"{platform.node()} {platform.platform()} {os.cpu_count()} cores", "steps": []}
    if not device and not args.dry_run:
        log("no NVIDIA GPU found (nvidia-smi); nothing to check. Use --dry-run to exercise the script on a CPU.")
        summary["result"] = "no GPU"
        summarise(out_dir, summary)
        return 2
    log(f"device: {device.get('name', 'none (dry run)')}, driver {device.get('driver', '-')}")

    limits = {step: limit * (DRY_RUN_SLOWDOWN if args.dry_run else 1) for step, limit in STEP_LIMITS_S.items()}
    for item in args.limit:
        step, _, seconds = item.partition("=")
        if step not in limits or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--limit {item!r}: expected STEP=SECONDS with STEP one of {sorted(limits)}")
        limits[step] = float(seconds)
    if args.dry_run:
        python = sys.executable
        summary["arch_list"] = "- (dry run: no build)"
    else:
        if args.python:
            python = shutil.which(args.python) or args.python
        else:
            python = os.path.join(ROOT, args.venv, "bin", "python")
        archs = arch_list(device["compute_capability"])
        summary["arch_list"] = archs
        build_env = {"TORCH_CUDA_ARCH_LIST": archs, "MAX_JOBS": str(os.cpu_count() or 4)}
        if args.python is None:
            summary["steps"].append(run_step("setup", ["make", "setup", f"VENV={args.venv}"], out_dir,
                                             limits["setup"], build_env))
        summary["steps"].append(run_step("build", [python, "setup.py", "build_ext", "--inplace"], out_dir,
                                         limits["build"], build_env))
        check = ("from eitp_kernels import _extension, backends; loaded, why = _extension.load(); "
                 "assert loaded, why; assert _extension.has_device_kernels('CUDA'), 'no CUDA kernels in the build'; "
                 "[print(s) for s in backends().values()]")
        summary["steps"].append(run_step("backends", [python, "-c", check], out_dir, limits["backends"]))
    summary["versions"] = versions(python)

    junit = os.path.join(out_dir, "gpu_tests.xml")
    summary["steps"].append(run_step(
        "tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}",
                  *args.pytest_args.split(), *args.tests.split()], out_dir, limits["tests"]))
    summary["tests"] = parse_junit(junit)

    bench_dir = os.path.join(out_dir, "bench")
    os.makedirs(bench_dir, exist_ok=True)
    bench_args = (args.bench_args.split() if args.bench_args is not None
                  else DRY_RUN_BENCH if args.dry_run else ["--quick", "--device", "cuda", "--no-compile"])
    summary["steps"].append(run_step(
        "bench", [python, "-m", "eitp_kernels.bench", *bench_args, "--json", os.path.join(bench_dir, "bench.json")],
        out_dir, limits["bench"]))
    summary["bench_headers"], summary["bench_rows"] = parse_bench(bench_dir)

    profile_args = (shlex.split(args.profile_args) if args.profile_args is not None
                    else DRY_RUN_PROFILE if args.dry_run else PROFILE_ARGS)
    summary["steps"].append(run_step(
        "profile", [python, "-m", "eitp_kernels.bench.profile", *profile_args, "--out", os.path.join(out_dir, "profile")],
        out_dir, limits["profile"]))

    failed_tests = [t for t in summary["tests"] if t["outcome"] in ("failed", "error")]
    failed_steps = [s for s in summary["steps"] if s["status"] != "ok"]
    failed_rows = [r for r in summary["bench_rows"] if r.get("check") not in (None, "ok")]
    summary["result"] = ("ok" if not (failed_tests or failed_steps or failed_rows) else
                         f"FAILED: {len(failed_steps)} steps, {len(failed_tests)} tests, {len(failed_rows)} bench rows")
    summary["seconds"] = round(time.time() - started, 1)
    summarise(out_dir, summary)
    log(f"{summary['result']} in {summary['seconds']} s; summary in {out_dir}/gpu_check.txt and gpu_check.json")
    return 0 if summary["result"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
