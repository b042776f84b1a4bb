import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("NASFAST_REQUIRE_OPS") != "1", reason="builds the package (CI)")
def test_pip_install_builds_the_ops_against_the_installed_torch(tmp_path):
    """Plain `pip install .`: its isolated build environment has no torch, the build finds this one's."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
                   check=True, capture_output=True)
    code = "import nasfast.ops as o, nasfast; print(o.available(), o.library_path(), nasfast.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert out[0] == "True" and out[1].startswith(str(target)) and os.path.isabs(out[1])
    assert out[2].startswith(str(target))
    ldd = subprocess.run(["ldd", out[1]], capture_output=True, text=True).stdout
    assert "python" not in ldd  # loadable by a C++ program without Python
    major, minor = torch.__version__.split(".")[:2]
    dist_info = next(target.glob("nasfast-*.dist-info"))
    requirement = f"Requires-Dist: torch<{major}.{int(minor) + 1},>={major}.{minor}.0.dev0"
    assert requirement in (dist_info / "METADATA").read_text()
    assert "\nTag: cp39-abi3-" in (dist_info / "WHEEL").read_text()  # no Python API: any CPython >= 3.9


def setup_py(*command: str, without_torch: bool = False) -> subprocess.CompletedProcess:
    hide = "sys.modules['torch'] = None; " if without_torch else ""
    code = (f"import runpy, sys; {hide}sys.argv = ['setup.py', *{list(command)!r}]; "
            f"runpy.run_path('setup.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


def test_the_package_requires_the_torch_release_it_was_built_against():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    requirement = runpy.run_path(str(REPO / "setup.py"))["torch_requirement"]
    assert requirement("2.13.0+cpu") == "torch>=2.13.0.dev0,<2.14"
    admitted = SpecifierSet(requirement("2.6.0a0+ecf3bae40a.nv25.01")[len("torch"):])
    for version, ok in [("2.6.0a0+ecf3bae40a.nv25.01", True), ("2.6.0", True), ("2.6.3+cu124", True),
                        ("2.6.0.dev20241112", True), ("2.7.0", False), ("2.7.0a0", False), ("2.5.1", False)]:
        assert admitted.contains(Version(version), prereleases=True) is ok, version
    with pytest.raises(SystemExit, match="nasfast needs torch >= 2.4; torch 2.3.1 is installed"):
        requirement("2.3.1")


@pytest.mark.parametrize("command", ["bdist_wheel", "egg_info"])  # egg_info: the metadata pip reads first
def test_a_build_without_torch_says_to_install_it_first(command, tmp_path):
    result = setup_py(command, *(["--egg-base", str(tmp_path)] if command == "egg_info" else []), without_torch=True)
    assert result.returncode == 1 and "this build sees none: pip install torch first" in result.stderr
    assert "hidden by an isolated build environment: pip install --no-build-isolation ." in result.stderr
    assert "without the native ops: NASFAST_BUILD_OPS=0 pip install ." in result.stderr


def test_a_compiler_that_fails_says_how_to_install_without_the_ops(tmp_path):
    """About 200 lines of the compiler's and setuptools' output ended in a traceback that named no way on."""
    failing = tmp_path / "cxx"
    failing.write_text('#!/bin/sh\ncase " $* " in *" -c "*) echo "cxx: error: cannot compile" >&2; exit 1;; esac\n'
                       'exec g++ "$@"\n')
    failing.chmod(0o755)
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp_path / "temp"),
                             "--build-lib", str(tmp_path / "lib")], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, CC=str(failing), CXX=str(failing)))
    assert result.returncode == 1 and "cxx: error: cannot compile" in result.stdout + result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("nasfast: the native ops failed to compile")
    assert result.stderr.rstrip().endswith("install without the ops, which then run their pure-PyTorch references: "
                                           "NASFAST_BUILD_OPS=0 pip install .")


def test_an_editable_install_keeps_its_objects_for_the_next_one(monkeypatch):
    """setuptools builds an editable install in a new temporary folder: each install.sh compiled
    every kernel again (80 s on 2 cores); from build/editable, ninja compiles what changed (3 s)."""
    from setuptools import Distribution

    monkeypatch.chdir(REPO)
    build = runpy.run_path(str(REPO / "setup.py"))["build_ext"]()(Distribution({"name": "nasfast"}))
    build.editable_mode = True
    build.ensure_finalized()
    assert build.build_temp == os.path.join("build", "editable")


def test_a_wheel_holds_no_module_deleted_since_an_earlier_build(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "_C*", "runs", "tests", "bench", "examples", "csrc"))
    (checkout / "nasfast" / "gone.py").write_text("")

    def wheel(folder):
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / folder), str(checkout)], check=True, capture_output=True,
                       env=dict(os.environ, NASFAST_BUILD_OPS="0"))
        with zipfile.ZipFile(next((tmp_path / folder).glob("nasfast-*.whl"))) as built:
            return set(built.namelist())

    assert "nasfast/gone.py" in wheel("first")
    (checkout / "nasfast" / "gone.py").unlink()
    assert "nasfast/gone.py" not in wheel("second") and "nasfast/search/loop.py" in wheel("second")


def test_nasfast_build_ops_0_installs_without_a_compiler_and_runs_the_references(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(REPO)], check=True, capture_output=True,
                   env=dict(os.environ, NASFAST_BUILD_OPS="0", CC="/nonexistent/cc", CXX="/nonexistent/c++"))
    code = "import nasfast.ops as o, nasfast; print(o.available(), o.why_unavailable().split()[0], nasfast.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert out[:2] == ["False", "not"] and out[2].startswith(str(target)) and not list(target.glob("nasfast/_C*"))
    dist_info = next(target.glob("nasfast-*.dist-info"))
    assert "Requires-Dist: torch>=2.4" in (dist_info / "METADATA").read_text()
    assert "\nTag: py3-none-any" in (dist_info / "WHEEL").read_text()


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_cuda_forced_with_a_cpu_only_torch_says_so(tmp_path):
    """torch's own error would blame CUDA_HOME, whatever it is set to."""
    code = ("import os, runpy, sys; os.environ['NASFAST_FORCE_CUDA'] = '1'; sys.argv = ['setup.py', 'build_ext', "
            f"'--build-temp', {str(tmp_path)!r}]; runpy.run_path('setup.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and (f"NASFAST_FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit: torch "
                                       f"{torch.__version__} is CPU-only") in result.stderr
    assert not list(tmp_path.iterdir())  # refused before building anything


def test_source_distribution_needs_no_torch_and_carries_what_the_readme_runs(tmp_path):
    result = setup_py("-q", "sdist", "-d", str(tmp_path), without_torch=True)
    assert result.returncode == 0, result.stderr
    with tarfile.open(next(tmp_path.glob("nasfast-*.tar.gz"))) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"bench/latency.py", "bench/gpu_run.sh", "examples/cpp/main.cpp", "install.sh", "tests/conftest.py",
            "csrc/checks.h", "csrc/kernels/confusion.cuh", "setup.py", "pyproject.toml"} <= names


def build_backend(hook: str, *args: str) -> subprocess.CompletedProcess:
    """A hook of the PEP 517 build backend, as `python -m build` calls it, where torch is not installed."""
    code = (f"import sys; sys.modules['torch'] = None; from setuptools import build_meta; "
            f"print(build_meta.{hook}(*{list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


def test_the_build_backend_makes_an_sdist_without_torch_and_refuses_a_wheel(tmp_path):
    """It asks for either's requirements with `setup.py egg_info`: only a wheel needs torch."""
    assert build_backend("get_requires_for_build_sdist").stdout.splitlines()[-1] == "[]"
    result = build_backend("build_sdist", str(tmp_path))
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "nasfast-0.1.0.tar.gz", result.stderr
    result = build_backend("get_requires_for_build_wheel")
    assert result.returncode == 1 and "this build sees none: pip install torch first" in result.stderr


def test_without_the_library_everything_falls_back_to_the_references():
    code = ("import torch, nasfast, nasfast.ops as o; assert not o.available() and o.library_path() is None; "
            "m = nasfast.create_model('arch0', 11).eval(); s = torch.jit.script(m); x = torch.randn(1, 3, 64, 64); "
            "assert 'nasfast::' not in str(s.inlined_graph); torch.testing.assert_close(s(x), m(x)); "
            "assert o.why_unavailable() == 'turned off (NASFAST_DISABLE_OPS=1)'; "
            "nasfast.Decoder('arch0', fused=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, NASFAST_DISABLE_OPS="1", PYTHONPATH=str(REPO)))
    assert out.stderr.strip().endswith(
        "RuntimeError: fused=True but the nasfast ops library is turned off (NASFAST_DISABLE_OPS=1)"), out.stderr


def test_import_nasfast_gives_its_modules_for_python_users():
    code = "import nasfast; print(nasfast.metrics.ConfusionMatrix.__name__, nasfast.ops.available.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert out.split() == ["ConfusionMatrix", "available"]


def test_the_readme_python_example_runs():
    readme = (REPO / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    shape = re.search(r"logits = .*# (\(.*\))\n", example).group(1)  # what its comment says
    result = subprocess.run([sys.executable, "-c", example + "print(tuple(logits.shape))"], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    params, madds, miou, logits_shape = result.stdout.split(maxsplit=3)
    assert (int(params), int(madds)) == (2_628_821, 4_141_080_576) and 0 <= float(miou) <= 1  # arch0, 21 classes
    assert logits_shape.strip() == shape == "(1, 21, 512, 512)"
