"""Build rerank._kernels: Cython 3, -O3, OpenMP where the compiler has it, -march=native unless
RERANK_NO_NATIVE=1. Each optional flag is probed, so a compiler without it still builds."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

BASE_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]


def compiler_accepts(flags, link_flags=()):
    """True when the C compiler builds and links a small OpenMP-using program with ``flags``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    source = "#ifdef _OPENMP\n#include <omp.h>\n#endif\nint main(void){return 0;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(source)
        cmd = cc.split() + list(flags) + [src, "-o", os.path.join(tmp, "probe")] + list(link_flags)
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def kernel_extension():
    compile_args, link_args, macros = list(BASE_FLAGS), [], []
    if sys.platform != "win32":
        if os.environ.get("RERANK_NO_NATIVE") != "1" and compiler_accepts(["-march=native"]):
            compile_args.append("-march=native")
            macros.append(("RERANK_NATIVE", "1"))
        if os.environ.get("RERANK_NO_OPENMP") != "1" and compiler_accepts(["-fopenmp"], ["-fopenmp"]):
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
    return Extension(
        "rerank._kernels",
        ["rerank/_kernels.pyx"],
        include_dirs=[numpy.get_include(), "rerank"],
        define_macros=macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        depends=["rerank/_simd.h", *sorted(glob.glob("rerank/_kernels_*.pxi"))],
    )


setup(ext_modules=cythonize([kernel_extension()], language_level=3,
                            compiler_directives={"embedsignature": True}))
