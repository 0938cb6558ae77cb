"""The reference is the oracle and the eager backend only: production modules
import the shared layout helpers from eitp_kernels._layout and call the
reference only for its op functions (the ``reference`` backend's steps)."""
import ast
import pathlib

import eitp_kernels
from eitp_kernels import _layout, reference

PACKAGE = pathlib.Path(eitp_kernels.__file__).parent
# The reference functions that are a backend's step (the eager backend).
EAGER_BACKEND_STEPS = {"finite_minmax", "histogram_counts", "histogram_entropy", "bin_counts", "linear_binning_counts",
                       "coherence_loss", "quantize_int8", "dequantize_int8", "fake_quant_int8"}
# Modules that hold only eager-backend tables may import the reference; everything else may not.
MAY_IMPORT_REFERENCE = {"ops"}


def _production_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "bench" or path.name in ("reference.py", "_build_info.py"):
            continue  # the benchmarks compare against the reference; the reference itself
        yield rel, ast.parse(path.read_text())


def _reference_uses(tree):
    imported = any(isinstance(node, ast.ImportFrom) and node.module == "eitp_kernels"
                   and any(a.name == "reference" for a in node.names) for node in ast.walk(tree))
    imported |= any(isinstance(node, ast.ImportFrom) and node.module == "eitp_kernels.reference" for node in ast.walk(tree))
    attrs = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and node.value.id == "reference"}
    return imported, attrs


def test_production_code_uses_the_reference_only_as_the_eager_backend():
    offenders = []
    for rel, tree in _production_modules():
        imported, attrs = _reference_uses(tree)
        if imported and rel.parts[0] not in MAY_IMPORT_REFERENCE:
            offenders.append(f"{rel} imports the reference")
        if attrs - EAGER_BACKEND_STEPS:
            offenders.append(f"{rel} uses reference.{sorted(attrs - EAGER_BACKEND_STEPS)}")
    assert not offenders, offenders


def test_the_reference_reexports_the_shared_helpers_unchanged():
    # Tests and benchmarks keep calling reference.<helper>: the same objects as _layout's.
    for name in _layout.__all__:
        assert getattr(reference, name) is getattr(_layout, name), name
        assert name in reference.__all__, name
