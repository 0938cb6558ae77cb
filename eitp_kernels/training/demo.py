"""eitp-train-demo: a measured, small-scale version of the EIT-P paper's Table 1.

Trains two MLPs on scikit-learn's bundled digits dataset (8x8 images, 1797
samples, no download), same seed, same data, same optimizer and epochs:

* baseline: plain cross-entropy training, saved as float32 safetensors;
* EIT-P: cross-entropy + EITPRegularizer (coherence and thermodynamic terms
  on the hidden layers, fused ops), int8 quantization-aware training
  (per-channel fake-quant weights), magnitude pruning for the last epochs,
  saved with save_compressed (int8 + zstd) and evaluated after reloading.

Prints one table (accuracy, accuracy change, compression ratio of the saved
file, time per step, energy where measurable) with the EIT-P step's overhead
over the fp32 step broken down into regularizer / QAT / pruning, and writes
JSON and a PNG of the training curves. Everything is measured on the machine
it runs on; nothing is copied from the paper.

Needs the ``[demo]`` extra (scikit-learn, matplotlib, tqdm):
``pip install 'eitp-kernels[demo]'``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

from eitp_kernels.training.compression import load_compressed, save_compressed
from eitp_kernels.training.energy import EnergyMeter
from eitp_kernels.training.formulas import magnitude_prune
from eitp_kernels.training.regularizer import EITPRegularizer


def load_digits_split(seed: int, test_fraction: float = 0.25):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def make_mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    out = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return out


def _batches(n: int, batch: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch + 1, batch):
        yield order[start:start + batch]


def _step(model, optimizer, xb, yb, regularizer=None, masks=None) -> tuple[torch.Tensor, float]:
    """One training step; returns the loss and the seconds spent in the regularizer call."""
    loss = nn.functional.cross_entropy(model(xb), yb)
    reg_seconds = 0.0
    if regularizer is not None:
        r0 = time.perf_counter()
        extra, _ = regularizer()
        loss = loss + extra
        reg_seconds = time.perf_counter() - r0
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if masks:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
    return loss.detach(), reg_seconds


def train(model, train_set, test_set, *, epochs, batch, lr, seed, regularizer=None, prune_at=None,
          sparsity=0.0, progress=None, label=""):
    """Train; return history and timing. Pruning (if any) starts at epoch ``prune_at`` with masks kept."""
    x, y = train_set
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"epoch": [], "loss": [], "test_accuracy": []}
    masks, steps, step_seconds, reg_seconds = None, 0, 0.0, 0.0
    for epoch in range(epochs):
        if prune_at is not None and epoch == prune_at:
            masks = magnitude_prune(model, sparsity)
        total = 0.0
        for index in _batches(len(x), batch, generator):
            t0 = time.perf_counter()
            loss, seconds = _step(model, optimizer, x[index], y[index], regularizer, masks)
            reg_seconds += seconds
            step_seconds += time.perf_counter() - t0
            steps += 1
            total += loss.item()
        history["epoch"].append(epoch + 1)
        history["loss"].append(total / max(1, len(x) // batch))
        history["test_accuracy"].append(accuracy(model, *test_set))
        if progress is not None:
            progress.set_postfix_str(f"{label} epoch {epoch + 1}/{epochs} acc {history['test_accuracy'][-1]:.3f}")
            progress.update(1)
    return history, {"steps": steps, "seconds_per_step": step_seconds / steps, "regularizer_seconds_per_step": reg_seconds / steps}


OVERHEAD_PARTS = ("qat", "regularizer", "pruning")


def measure_overheads(hidden: int, train_set, *, batch: int, lr: float, seed: int, sparsity: float,
                      steps: int, rounds: int = 3) -> dict:
    """Seconds per training step of the EIT-P step built up one part at a time.

    Four variants from the same initial weights train on the same batch:
    fp32; + QAT (fake-quant weights); + the regularizer (its forward and
    backward); + pruning masks re-applied after each step. Each part's
    overhead is its variant's time minus the previous one's, so the parts add
    up to the full step's overhead over fp32. After one warm-up step each, the
    variants take turns one step at a time for ``steps * rounds`` turns and
    each reports its median step, so drift and bursts of load on a shared
    machine hit all four alike. Returns
    ``{"seconds_per_step": {variant: s}, "overhead_seconds": {part: s}}``.
    """
    from eitp_kernels.nn import prepare_qat

    x, y = train_set
    index = next(_batches(len(x), batch, torch.Generator().manual_seed(seed)))
    xb, yb = x[index], y[index]
    variants = {}
    for name in ("fp32", "qat", "regularizer", "pruning"):
        torch.manual_seed(seed)
        model = make_mlp(hidden) if name == "fp32" else prepare_qat(make_mlp(hidden))
        regularizer = EITPRegularizer(model, ["1", "3"], bins=32) if name in ("regularizer", "pruning") else None
        masks = magnitude_prune(model, sparsity) if name == "pruning" else None
        variants[name] = (model, torch.optim.Adam(model.parameters(), lr=lr), regularizer, masks)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, (model, optimizer, regularizer, masks) in variants.items():
        _step(model, optimizer, xb, yb, regularizer, masks)  # warm-up
    for _ in range(steps * rounds):
        for name, (model, optimizer, regularizer, masks) in variants.items():
            t0 = time.perf_counter()
            _step(model, optimizer, xb, yb, regularizer, masks)
            times[name].append(time.perf_counter() - t0)
    best = {name: statistics.median(t) for name, t in times.items()}
    for _, _, regularizer, _ in variants.values():
        if regularizer is not None:
            regularizer.remove()
    order = list(variants)
    overhead = {part: best[order[i + 1]] - best[order[i]] for i, part in enumerate(OVERHEAD_PARTS)}
    return {"seconds_per_step": best, "overhead_seconds": overhead}


def _file_bytes_fp32(model, path):
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return os.path.getsize(path)


def run(args) -> dict:
    from tqdm import tqdm

    from eitp_kernels.nn import prepare_qat

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    train_set, test_set = load_digits_split(args.seed)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    # Warm-up (threads, allocator, first-call costs of both paths) so neither
    # variant's time per step pays them; not recorded.
    warm = prepare_qat(make_mlp(args.hidden))
    warm_reg = EITPRegularizer(warm, ["1"], bins=32)
    train(warm, train_set, test_set, epochs=1, batch=args.batch, lr=args.lr, seed=args.seed, regularizer=warm_reg)
    warm_reg.remove()
    with tqdm(total=2 * args.epochs, desc="eitp-train-demo", disable=args.quiet) as progress:
        torch.manual_seed(args.seed)
        baseline = make_mlp(args.hidden)
        with EnergyMeter() as meter:
            history, timing = train(baseline, train_set, test_set, epochs=args.epochs, batch=args.batch, lr=args.lr,
                                    seed=args.seed, progress=progress, label="baseline")
        base_bytes = _file_bytes_fp32(baseline, os.path.join(args.out, "baseline.safetensors"))
        results["baseline"] = {"history": history, **timing, "accuracy": accuracy(baseline, *test_set),
                               "file_bytes": base_bytes, "energy": meter.result.__dict__}

        torch.manual_seed(args.seed)
        model = prepare_qat(make_mlp(args.hidden))
        regularizer = EITPRegularizer(model, ["1", "3"], lambda_coherence=args.lambda_coherence,
                                      lambda_thermo=args.lambda_thermo, bins=32)
        with EnergyMeter() as meter:
            history, timing = train(model, train_set, test_set, epochs=args.epochs, batch=args.batch, lr=args.lr,
                                    seed=args.seed, regularizer=regularizer, prune_at=args.epochs - args.prune_epochs,
                                    sparsity=args.sparsity, progress=progress, label="eitp")
        regularizer.remove()
        path = os.path.join(args.out, "eitp.eitpz")
        report = save_compressed(model, path)  # FakeQuantLinear keeps nn.Linear's state-dict keys
        restored = make_mlp(args.hidden)
        load_compressed(path, model=restored)
        results["eitp"] = {"history": history, **timing, "accuracy": accuracy(restored, *test_set),
                           "accuracy_before_save": accuracy(model, *test_set), "file_bytes": report.compressed_bytes,
                           "code_entropy_bits": report.code_entropy_bits, "achieved_bits": report.achieved_bits,
                           "sparsity": report.sparsity, "energy": meter.result.__dict__}
    results["overhead"] = measure_overheads(args.hidden, train_set, batch=args.batch, lr=args.lr, seed=args.seed,
                                            sparsity=args.sparsity, steps=args.probe_steps)
    results["config"] = vars(args)
    return results


def format_table(results: dict) -> str:
    base, eitp = results["baseline"], results["eitp"]

    def energy(r):
        e = r["energy"]
        return f"{e['joules']:.1f} J ({e['source']})" if e["joules"] is not None else "n/a (see below)"

    rows = [
        ("variant", "accuracy", "acc. change", "compression", "ms/step", "energy"),
        ("baseline (fp32)", f"{base['accuracy']:.4f}", "-", "1.00x", f"{1e3 * base['seconds_per_step']:.2f}", energy(base)),
        ("EIT-P (reg+QAT+prune, int8+zstd)", f"{eitp['accuracy']:.4f}", f"{eitp['accuracy'] - base['accuracy']:+.4f}",
         f"{base['file_bytes'] / eitp['file_bytes']:.2f}x", f"{1e3 * eitp['seconds_per_step']:.2f}", energy(eitp)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"EIT-P file: {eitp['file_bytes']} B vs {base['file_bytes']} B fp32; int8 code entropy "
                 f"{eitp['code_entropy_bits']:.2f} bits/weight (lower bound), achieved {eitp['achieved_bits']:.2f}; "
                 f"zero weights {100 * eitp['sparsity']:.1f}%")
    if "overhead" in results:
        lines.append(format_overhead(results["overhead"]))
    if base["energy"]["joules"] is None:
        lines.append(f"energy: not measurable here ({base['energy']['note']})")
    return "\n".join(lines)


def format_overhead(overhead: dict) -> str:
    """One line: each part's overhead per step in ms and as % of the fp32 step."""
    fp32 = overhead["seconds_per_step"]["fp32"]
    parts = ", ".join(f"{part} {1e3 * s:+.3f} ms ({100 * s / fp32:+.1f}%)"
                      for part, s in overhead["overhead_seconds"].items())
    total = sum(overhead["overhead_seconds"].values())
    return (f"EIT-P step overhead over fp32 ({1e3 * fp32:.3f} ms/step, one batch repeated): {parts}; "
            f"total {1e3 * total:+.3f} ms ({100 * total / fp32:+.1f}%)")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("baseline", "eitp"):
        h = results[name]["history"]
        ax_loss.plot(h["epoch"], h["loss"], label=name)
        ax_acc.plot(h["epoch"], h["test_accuracy"], label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (incl. regularizer)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="digits test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="eitp-train-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per variant (>= 1)")
    parser.add_argument("--prune-epochs", type=int, default=None,
                        help="last epochs trained with pruning masks, 0 to --epochs "
                             "(default: a quarter of --epochs, rounded up: 8 of 30)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lambda-coherence", type=float, default=1e-3)
    parser.add_argument("--lambda-thermo", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="eitp-demo-out", help="folder for the JSON, the plot and the saved models")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--probe-steps", type=int, default=30,
                        help="timed steps per variant (x3) for the overhead breakdown")
    args = parser.parse_args(argv)
    for name in ("epochs", "hidden", "batch", "probe_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.prune_epochs is None:
        args.prune_epochs = math.ceil(args.epochs / 4)
    elif not 0 <= args.prune_epochs <= args.epochs:
        parser.error(f"--prune-epochs must be between 0 and --epochs ({args.epochs}), got {args.prune_epochs}")
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    return args


# module -> the pip package that provides it, for the missing-extra message
DEMO_EXTRA_MODULES = {"tqdm": "tqdm", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def missing_demo_modules() -> list[str]:
    """The [demo] extra's modules that cannot be imported here."""
    import importlib

    missing = []
    for module in DEMO_EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = missing_demo_modules()
    if missing:
        packages = ", ".join(DEMO_EXTRA_MODULES[m] for m in missing)
        print(f"eitp-train-demo needs the [demo] extra of eitp-kernels ({packages} not installed); install it with:\n"
              f"    pip install 'eitp-kernels[demo]'", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    plot(results, os.path.join(args.out, "training_curves.png"))
    print(format_table(results))
    print(f"wrote {args.out}/results.json and {args.out}/training_curves.png in {results['wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
