"""The native library is built and loadable without Python, and its kernels compile for every
target: C++14 host compilers, the Jetson TX2 (sm_62, through clang-16) and current GPUs (nvcc)."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nasfast.ops as ops

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "csrc" / "tools"
KERNEL_HEADERS = sorted((REPO / "csrc" / "kernels").glob("*.h")) + sorted((REPO / "csrc" / "kernels").glob("*.cuh"))


def test_library_is_built_when_required():
    if os.environ.get("NASFAST_REQUIRE_OPS") == "1":
        assert ops.available(), "NASFAST_REQUIRE_OPS=1 but the nasfast ops library is not built"
    if not ops.available():
        pytest.skip("native ops library not built")
    path = ops.library_path()
    assert os.path.isabs(path) and os.path.isfile(path)


@pytest.mark.skipif(os.environ.get("NASFAST_REQUIRE_CPP") != "1", reason="set NASFAST_REQUIRE_CPP=1 (CI)")
def test_cmake_is_there_when_the_cpp_example_is_required():
    """Without cmake, the C++ example's tests (test_deploy) skip: CI must not pass without them."""
    assert shutil.which("cmake"), "NASFAST_REQUIRE_CPP=1 but there is no cmake: the C++ example's tests would skip"


@pytest.mark.skipif(not ops.available() or not shutil.which("ldd"), reason="needs the library and ldd")
def test_library_needs_no_python():
    ldd = subprocess.run(["ldd", ops.library_path()], capture_output=True, text=True, check=True).stdout
    assert "python" not in ldd, ldd
    if not shutil.which("nm"):
        pytest.skip("needs nm for the undefined symbols")
    symbols = subprocess.run(["nm", "-D", "--undefined-only", ops.library_path()], capture_output=True, text=True,
                             check=True).stdout
    assert "PyInit" not in symbols and " Py" not in symbols


@pytest.mark.skipif(not ops.available() or sys.platform != "linux" or not shutil.which("objdump"),
                    reason="needs the library, Linux and objdump")
def test_library_shares_the_cpp_runtime():
    """A C++ runtime linked statically beside torch's breaks our error messages: a formatted
    TORCH_CHECK message is cut short (g++ -static-libstdc++ here) or crashes the process."""
    needed = subprocess.run(["objdump", "-p", ops.library_path()], capture_output=True, text=True, check=True).stdout
    assert re.search(r"NEEDED\s+lib(std)?c\+\+\.so", needed), (
        "the ops library links its C++ runtime statically; rebuild with a compiler that links it "
        "dynamically, e.g. CXX=/usr/bin/g++\n" + needed)


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("objdump") or not shutil.which("g++"),
                    reason="needs Linux, objdump and g++")
@pytest.mark.parametrize("static", [False, True], ids=["shared", "static"])
def test_setup_removes_a_library_with_a_static_cpp_runtime(tmp_path, static):
    """The GPU machine's compiler linked libstdc++ statically by default: the library crashed on errors."""
    source, library = tmp_path / "runtime.cpp", tmp_path / "_C.so"
    source.write_text("#include <string>\nstd::string text(int n) { return std::string(n, 'x'); }\n")
    subprocess.run(["g++", "-shared", "-fPIC", *(["-static-libstdc++"] if static else []), str(source),
                    "-o", str(library)], check=True)
    spec = importlib.util.spec_from_file_location("nasfast_setup", REPO / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    if static:
        with pytest.raises(SystemExit, match=r"^g\+\+ links its C\+\+ runtime statically into the ops library"):
            setup.check_shared_cpp_runtime(str(library), "g++")
    else:
        setup.check_shared_cpp_runtime(str(library), "g++")
    assert library.exists() != static


def test_kernel_headers_are_torch_free():
    for header in KERNEL_HEADERS:
        text = header.read_text()
        assert "#include <ATen" not in text and "#include <torch" not in text and "#include <c10" not in text, header


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++")
def test_cpu_kernels_compile_as_cxx14(tmp_path):
    run = subprocess.run(["g++", "-std=c++14", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O1", "-c",
                          str(TOOLS / "check_kernels.cpp"), "-o", str(tmp_path / "kernels.o")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def sm62_root():
    root = os.environ.get("NASFAST_SM62_ROOT")
    required = os.environ.get("NASFAST_REQUIRE_SM62") == "1"
    if not shutil.which("clang++-16") or not root or not (Path(root) / "version.json").is_file():
        message = "needs clang++-16 and NASFAST_SM62_ROOT from csrc/tools/setup_sm62.sh"
        if required:
            pytest.fail(message + " (NASFAST_REQUIRE_SM62=1)")
        pytest.skip(message)
    return root


def test_cuda_kernels_compile_for_the_jetson_tx2_sm62(tmp_path):
    root = sm62_root()
    out = tmp_path / "kernels_sm62.o"
    run = subprocess.run(["clang++-16", "-std=c++14", "-O2", "-Wall", "-Werror", "-Wno-unknown-cuda-version",
                          f"--cuda-path={root}", "--cuda-gpu-arch=sm_62", "--cuda-device-only", "-c",
                          str(TOOLS / "check_kernels.cu"), "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 10_000


def test_sm62_kernel_check_can_fail(tmp_path):
    """The check above discriminates: device code that needs sm_70 (__nanosleep) fails for sm_62."""
    root = sm62_root()
    source = tmp_path / "sleep.cu"
    source.write_text("__global__ void k(int* p) { __nanosleep(100); p[0] = 1; }\n")
    results = {}
    for arch in ("sm_62", "sm_70"):
        results[arch] = subprocess.run(["clang++-16", "-std=c++14", "-Wno-unknown-cuda-version", f"--cuda-path={root}",
                                        f"--cuda-gpu-arch={arch}", "--cuda-device-only", "-c", str(source), "-o",
                                        str(tmp_path / f"{arch}.o")], capture_output=True, text=True).returncode
    assert results == {"sm_62": 1, "sm_70": 0}


NVCC = os.environ.get("NASFAST_NVCC", "/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(not os.access(NVCC, os.X_OK), reason="needs nvcc (NASFAST_NVCC)")
def test_cuda_kernels_compile_with_nvcc_for_a_current_gpu(tmp_path):
    run = subprocess.run([NVCC, "-std=c++17", "-O3", "-arch=sm_90", "-Werror", "all-warnings", "-c",
                          str(TOOLS / "check_kernels.cu"), "-o", str(tmp_path / "kernels_sm90.o")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
