"""Builds nasfast's native ops library (nasfast/_C*.so) with torch.utils.cpp_extension.

CUDA kernels are compiled when CUDA is available (or NASFAST_FORCE_CUDA=1) and skipped with
NASFAST_FORCE_CPU=1. The library registers its ops with the dispatcher (TORCH_LIBRARY) and does
not link libtorch_python, so a C++ program can load it next to libtorch.
"""
import glob
import os

from setuptools import setup


def ops_extension():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    force_cpu = os.environ.get("NASFAST_FORCE_CPU") == "1"
    force_cuda = os.environ.get("NASFAST_FORCE_CUDA") == "1"
    with_cuda = not force_cpu and (force_cuda or (torch.cuda.is_available() and CUDA_HOME is not None))
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/autograd/*.cpp"))
    flags = {"cxx": ["-O3"]}
    kind = CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        flags["nvcc"] = ["-O3", "--use_fast_math"]
        kind = CUDAExtension
    extension = kind("nasfast._C", sources, extra_compile_args=flags, py_limited_api=True)
    # Loaded with torch.ops.load_library, never imported: no need for libtorch_python.
    extension.libraries = [lib for lib in extension.libraries if lib != "torch_python"]
    return extension


def build_ext():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(no_python_abi_suffix=True)


setup(ext_modules=[ops_extension()], cmdclass={"build_ext": build_ext()})
