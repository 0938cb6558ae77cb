"""The install paths users take, run as a user would run them.

One module-scoped build: the tracked files of this checkout (what a fresh
clone holds) are copied to a scratch directory, `python -m build
--no-isolation` makes the sdist and then a wheel from that sdist (CPU sources
only: EITP_WITH_CUDA=0), and the wheel is installed into fresh virtual
environments that see the running interpreter's site-packages through a
.pth file (torch and the test tools, without copying them). Checked: the
sdist's and the wheel's contents, the wheel's tag against the Py_LIMITED_API
value it was compiled with, the torch pin, the installed package working, and
the warning the same wheel gives under another torch series (torch 2.13.0,
the CPU build that pip installs from this machine's disk; skipped where pip
cannot install it).

About 2 minutes on 2 idle cores, most of it the compile.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_TORCH = "2.13.0"  # a torch series other than the running one, for the mismatch check


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _tracked_files():
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("needs a git checkout (the sdist is made from the tracked files)")
    out = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout
    return [path for path in out.split("\0") if path and os.path.isfile(os.path.join(ROOT, path))]


def _fresh_venv(path):
    """A venv without pip or setuptools of its own that sees this interpreter's packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = os.path.join(str(path), "bin", "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_eitp_test_parent_site.pth"), "w") as f:
        f.write("\n".join(sorted(ours)) + "\n")
    return python


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EITP_NO_EXTENSION", "EITP_BACKEND")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist and wheel made by `python -m build --no-isolation` from a copy of the tracked files."""
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("`build` is not installed: pip install build (it is in the [test] extra)")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "clone"
    for path in _tracked_files():
        os.makedirs(os.path.dirname(str(source / path)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), str(source / path))
    python = _fresh_venv(work / "build-venv")
    env = _env(EITP_WITH_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    _run([python, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(source)], env=env, cwd=str(work))
    sdists = sorted((work / "dist").glob("*.tar.gz"))
    wheels = sorted((work / "dist").glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(str(work / "dist"))
    return {"work": work, "source": source, "sdist": sdists[0], "wheel": wheels[0]}


def _wheel_text(wheel, suffix):
    with zipfile.ZipFile(str(wheel)) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name).decode()


def _build_record(wheel):
    tree = ast.parse(_wheel_text(wheel, "eitp_kernels/_build_info.py"))
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets}


def test_sdist_holds_every_tracked_file(built):
    # Everything a fresh clone has (build sources, headers, docs, tests), so the sdist builds and tests alike.
    with tarfile.open(str(built["sdist"])) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = set(_tracked_files()) - {".gitignore"}
    assert {"csrc/bindings/tensor_args.h", "csrc/kernels/common.h", "LICENSE", "docs/design.md"} <= needed
    assert needed <= names, sorted(needed - names)
    # A build record describes one build; the sdist must not carry the packager's.
    assert not any(n.endswith(("_build_info.py", ".so")) for n in names)


def test_wheel_holds_the_extension_and_nothing_from_tests(built):
    with zipfile.ZipFile(str(built["wheel"])) as z:
        names = z.namelist()
    assert any(re.fullmatch(r"eitp_kernels/_C\.abi3\.so", n) for n in names), names
    assert "eitp_kernels/_build_info.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/")) or "/tests/" in n]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_tag_matches_the_limited_api_it_was_compiled_with(built):
    record = _build_record(built["wheel"])
    macro = record["PY_LIMITED_API"]
    # What torch's cpp_extension defines for py_limited_api extensions: the record must be that value.
    from torch.utils import cpp_extension

    if hasattr(cpp_extension, "min_supported_cpython"):
        assert macro == int(cpp_extension.min_supported_cpython, 16)
    major, minor = (macro >> 24) & 0xFF, (macro >> 16) & 0xFF
    tags = re.findall(r"^Tag: (.+)$", _wheel_text(built["wheel"], ".dist-info/WHEEL"), re.M)
    assert tags and all(tag.startswith(f"cp{major}{minor}-abi3-") for tag in tags), tags
    assert built["wheel"].name.split("-")[2:4] == [f"cp{major}{minor}", "abi3"]
    metadata = _wheel_text(built["wheel"], ".dist-info/METADATA")
    assert re.search(rf"^Requires-Python: >={major}\.{minor}$", metadata, re.M), metadata[:800]


def test_wheel_pins_torch_to_the_series_it_was_built_against(built):
    record = _build_record(built["wheel"])
    assert record["TORCH_VERSION"] == torch.__version__ and record["EXTENSION_BUILT"] is True
    assert record["CUDA_SOURCES"] is False  # EITP_WITH_CUDA=0
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    metadata = _wheel_text(built["wheel"], ".dist-info/METADATA")
    torch_requirements = re.findall(r"^Requires-Dist: (torch\b.*)$", metadata, re.M)
    assert torch_requirements == [f"torch<{major}.{minor + 1},>={major}.{minor}"], torch_requirements


# Runs in an installed environment from a neutral directory: where the package
# came from, what import warned, the backends, and one op on cpp vs the reference.
_USE = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import eitp_kernels, torch
    from eitp_kernels import reference
x = torch.randn(1000, 37, generator=torch.Generator().manual_seed(0))
statuses = eitp_kernels.backends()
out = {"file": eitp_kernels.__file__, "torch": torch.__version__, "cpp": str(statuses["cpp"]),
       "warnings": [str(w.message) for w in caught if w.category.__name__ == "ExtensionUnavailableWarning"],
       "auto": eitp_kernels._backends.resolve("op", torch.device("cpu"), {"cpu": ("cpp", "reference")})}
if statuses["cpp"].available:
    with eitp_kernels.use_backend("cpp"):
        h = eitp_kernels.histogram_entropy(x, dim=1)
        q = eitp_kernels.quantize_int8(x, granularity="channel")[0]
    out["entropy_err"] = float(((h - reference.histogram_entropy(x, dim=1)).abs().max()))
    out["codes_equal"] = bool(torch.equal(q, reference.quantize_int8(x, granularity="channel")[0]))
else:
    try:
        with eitp_kernels.use_backend("cpp"):
            eitp_kernels.finite_minmax(x)
        out["explicit"] = "ran"
    except eitp_kernels.BackendUnavailableError as error:
        out["explicit"] = str(error)
print(json.dumps(out))
"""


def _install_and_use(python, wheel, cwd):
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile",
          str(wheel)], env=_env())
    result = _run([python, "-c", _USE], env=_env(), cwd=str(cwd))
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_wheel_from_the_sdist_installs_into_a_fresh_venv_and_works(built):
    venv = built["work"] / "use-venv"
    python = _fresh_venv(venv)
    out = _install_and_use(python, built["wheel"], built["work"])
    assert out["file"].startswith(str(venv)), out["file"]  # the installed copy, not this checkout
    assert out["warnings"] == [] and out["cpp"] == "cpp: available on cpu", out
    assert out["auto"] == "cpp"
    assert out["entropy_err"] < 1e-5 and out["codes_equal"], out


def test_wheel_under_another_torch_series_warns_once_with_the_fix(built):
    if torch.__version__.startswith(OTHER_TORCH.rsplit(".", 1)[0] + "."):
        pytest.skip(f"the running torch is already {torch.__version__}")
    venv = built["work"] / "other-torch-venv"
    python = _fresh_venv(venv)
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-compile", f"torch=={OTHER_TORCH}"],
        capture_output=True, text=True, env=_env())
    if installed.returncode != 0:
        pytest.skip(f"pip cannot install torch=={OTHER_TORCH} here: {installed.stderr.strip()[-300:]}")
    out = _install_and_use(python, built["wheel"], built["work"])
    assert out["torch"].startswith(OTHER_TORCH), out
    assert len(out["warnings"]) == 1, out
    message = out["warnings"][0]
    assert f"built against torch {torch.__version__} but torch {out['torch']} is installed" in message
    # The sdist's build directory is gone: the command rebuilds from the package index or a given path.
    assert f"{python} -m pip install --no-build-isolation --force-reinstall --no-deps" in message
    assert "EITP_NO_EXTENSION" not in message
    assert out["cpp"] == f"cpp: unavailable ({message})"
    assert out["auto"] == "reference"
    assert message in out["explicit"] and "backend 'cpp' is unavailable" in out["explicit"]
