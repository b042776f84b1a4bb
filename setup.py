"""Builds nasfast's native ops library (nasfast/_C*.so) with torch.utils.cpp_extension.

CUDA kernels (csrc/cuda) are compiled when CUDA is available, or with NASFAST_FORCE_CUDA=1 (a
machine with the toolkit but no GPU); NASFAST_FORCE_CPU=1 skips them. NASFAST_BUILD_OPS=0 builds no
library at all (no compiler needed; nasfast then runs its pure-PyTorch references). Without the
CUDA kernels, the ops still accept CUDA tensors through ATen (csrc/cuda_fallback). The library
registers its ops with the dispatcher (TORCH_LIBRARY) and does not link libtorch_python, so a C++
program can load it next to libtorch. It is built against the torch installed where nasfast is
installed, which pip's isolated build environment hides: that torch is found anyway (see
find_torch), so plain `pip install .` works; `pip install --no-build-isolation .` does the same
without the isolation.
"""
import glob
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig

from setuptools import setup

# setup.py commands that compile the library. Without one of them, an sdist is made without torch;
# anything else (the metadata pip reads before a build too) needs the torch the ops will run with.
BUILDS = ("build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install")
MINIMUM_TORCH = (2, 4)  # torch.library.register_fake, torch.compiler.is_compiling


def find_torch():
    """The torch module of the environment being installed into: native ops only load with the torch
    they were compiled against, so the build must not use a torch of its own (pip's isolated build
    environment drops this environment's site-packages from sys.path; they go back at its end, after
    the build tools). None when there is no torch."""
    for path in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), site.getusersitepackages()):
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    try:
        import torch
    except ImportError:
        return None
    return torch


def with_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("NASFAST_FORCE_CPU") == "1":
        return False
    if os.environ.get("NASFAST_FORCE_CUDA") == "1":
        if torch.version.cuda is None or CUDA_HOME is None:  # else torch's error blames CUDA_HOME alone
            sys.exit(f"NASFAST_FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit: torch {torch.__version__} "
                     f"is {'CPU-only' if torch.version.cuda is None else 'built for CUDA ' + torch.version.cuda}, "
                     f"the toolkit {'not found (set CUDA_HOME)' if CUDA_HOME is None else 'at ' + CUDA_HOME}")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def openmp_flags():
    """at::parallel_for is inline: with torch's OpenMP backend, the library itself must be compiled
    with OpenMP or its loops run on one thread. libgomp then resolves to the one torch loaded."""
    import torch

    if "backend: OpenMP" not in torch.__config__.parallel_info() or sys.platform == "darwin":
        return [], []
    return (["/openmp"], []) if sys.platform == "win32" else (["-fopenmp"], ["-fopenmp"])


def ops_extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/autograd/*.cpp") +
                     glob.glob("csrc/composite/*.cpp"))
    compile_openmp, link_openmp = openmp_flags()
    # -fno-trapping-math: no code here relies on floating-point traps, and with them GCC cannot
    # vectorise loops that select between floats before converting them (the exponentials).
    flags = {"cxx": ["-O3", "-g0", "-fno-trapping-math"] + compile_openmp}
    if with_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        flags["nvcc"] = ["-O3"]
        kind = CUDAExtension
    else:
        sources += sorted(glob.glob("csrc/cuda_fallback/*.cpp"))
        kind = CppExtension
    soname = ["-Wl,-soname,_C.so"]  # a C++ program linked to it finds it by name (examples/cpp: beside it)
    extension = kind("nasfast._C", sources, extra_compile_args=flags, extra_link_args=link_openmp + soname,
                     py_limited_api=True)
    # Loaded with torch.ops.load_library, never imported: no need for libtorch_python.
    extension.libraries = [lib for lib in extension.libraries if lib != "torch_python"]
    return extension


def check_shared_cpp_runtime(library: str, linker: str):
    """torch's errors cross the library as C++ exceptions: with a C++ runtime of its own linked in
    statically, one with a formatted message crashed the process (a compiler that links libstdc++
    statically by default did this). Such a library is removed, with what to do instead."""
    if not shutil.which("objdump"):
        return
    dynamic = subprocess.run(["objdump", "-p", library], capture_output=True, text=True)
    if dynamic.returncode != 0 or re.search(r"NEEDED\s+lib(std)?c\+\+\.so", dynamic.stdout):
        return
    os.remove(library)
    sys.exit(f"{linker} links its C++ runtime statically into the ops library, where torch's errors would crash "
             "the process: build with a compiler that links it dynamically, e.g. "
             "CC=/usr/bin/gcc CXX=/usr/bin/g++ pip install .")


def build_ext():
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension.with_options(no_python_abi_suffix=True)):
        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):  # setuptools' is a new temporary folder each time
                self.build_temp = os.path.join("build", "editable")  # ninja then compiles only what changed

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as error:  # the compiler's own errors are above it
                sys.exit(f"nasfast: the native ops failed to compile ({type(error).__name__}: {error}; the compiler's "
                         "errors are above). Install a C++ compiler (g++ 9 or newer) or choose one with CC=... "
                         "CXX=..., or install without the ops, which then run their pure-PyTorch references: "
                         "NASFAST_BUILD_OPS=0 pip install .")

        def build_extension(self, extension):
            super().build_extension(extension)
            if sys.platform.startswith("linux"):
                check_shared_cpp_runtime(self.get_ext_fullpath(extension.name), self.compiler.linker_so[0])

    return Build


def fresh_build_py():
    from setuptools.command.build_py import build_py

    class FreshBuildPy(build_py):
        """Copies the package into an emptied build/lib/nasfast: a module deleted from the sources
        (by a git pull, say) stayed there, and every later wheel of this checkout installed it."""
        def run(self):
            if not getattr(self, "editable_mode", False):
                shutil.rmtree(os.path.join(self.build_lib, "nasfast"), ignore_errors=True)
            super().run()

    return FreshBuildPy


def torch_requirement(version: str) -> str:
    """The torch releases the library loads with: the one it is built against, its development and
    pre-releases and local builds (NVIDIA's containers, a Jetson's wheels) included."""
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < MINIMUM_TORCH:
        sys.exit(f"nasfast needs torch >= {'.'.join(map(str, MINIMUM_TORCH))}; torch {version} is installed")
    return f"torch>={major}.{minor}.0.dev0,<{major}.{minor + 1}"


def making_sdist() -> bool:
    """Whether setup.py runs for an sdist alone. setuptools' build backend (python -m build --sdist)
    asks for an sdist's build requirements with `setup.py egg_info`, as it does before a wheel's
    build: the backend's hook that asks tells the two apart."""
    if "sdist" in sys.argv and not any(command in sys.argv for command in BUILDS):
        return True
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != "get_requires_for_build_sdist":
        frame = frame.f_back
    return frame is not None


def main():
    requirements = ["numpy", "pillow", "tqdm>=4.60"]  # tqdm's delay: progress lines in logs
    # No library: an sdist (sources only), or NASFAST_BUILD_OPS=0 (the references then run on any torch).
    without_library = making_sdist() or os.environ.get("NASFAST_BUILD_OPS") == "0"
    torch = None if without_library else find_torch()
    if torch is None:
        if not without_library:  # a build, or the metadata before one (pip would fetch a torch of its own)
            sys.exit("nasfast builds its native ops against the torch it will run with, and this build sees none: "
                     "pip install torch first (the build for your CUDA version: https://pytorch.org), then "
                     "pip install . again. Where torch is installed but hidden by an isolated build environment: "
                     "pip install --no-build-isolation . (or pip install build setuptools ninja, then python -m "
                     "build --no-isolation); without the native ops: NASFAST_BUILD_OPS=0 pip install .")
        setup(cmdclass={"build_py": fresh_build_py()},
              install_requires=["torch>={}.{}".format(*MINIMUM_TORCH)] + requirements)
        return
    # The library uses no Python API, so one wheel serves every CPython >= 3.9 (with the same torch).
    setup(ext_modules=[ops_extension()], cmdclass={"build_py": fresh_build_py(), "build_ext": build_ext()},
          options={"bdist_wheel": {"py_limited_api": "cp39"}},
          install_requires=[torch_requirement(torch.__version__)] + requirements)


if __name__ == "__main__":  # as pip and setuptools run it
    main()
