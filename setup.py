"""Build the native parts of the sensor; all metadata lives in pyproject.toml.

Knobs (environment):
  SENSOR_NO_EXTENSIONS=1  build nothing native (the pure-Python twins are used)
  SENSOR_DEBUG=1          -O0 -g, asserts on
  SENSOR_ANNOTATE=1       write Cython's HTML annotation next to the .pyx
  SENSOR_SANITIZE=1       -O1 -g with ASan + UBSan (`make sanitize`; load the sanitizer runtimes
                          first: tools/sanitize.sh shows how)
"""
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NO_EXTENSIONS = bool(os.environ.get("SENSOR_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
DEBUG = bool(os.environ.get("SENSOR_DEBUG"))


SANITIZE = bool(os.environ.get("SENSOR_SANITIZE")) and os.name != "nt"
# ASan + UBSan, asserts on; a UBSan report stops the process like an ASan one does.
SANITIZE_CFLAGS = ["-O1", "-g", "-UNDEBUG", "-fno-omit-frame-pointer",
                   "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]


def _cflags():
    if os.name == "nt":
        return ["/O2"] if not DEBUG else ["/Od", "/Zi"]
    if SANITIZE:
        return list(SANITIZE_CFLAGS)
    return ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"]


def _ext_modules():
    if NO_EXTENSIONS:
        print("*** pure-Python build: SENSOR_NO_EXTENSIONS is set ***")
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    link = ["-fsanitize=address,undefined"] if SANITIZE else []
    exts = [
        Extension(
            "sensor.detect._matcher",
            ["native/_matcher.pyx"],
            include_dirs=["native"],
            extra_compile_args=_cflags(),
            extra_link_args=link,
        ),
        Extension(
            "sensor.sources._etw_decode",
            ["native/_etw_decode.pyx"],
            extra_compile_args=_cflags(),
            extra_link_args=link,
        ),
    ]
    return cythonize(
        exts,
        include_path=["native"],
        annotate=bool(os.environ.get("SENSOR_ANNOTATE")),
        compiler_directives={"language_level": 3, "embedsignature": True},
    )


def _cffi_modules():
    if NO_EXTENSIONS:
        return []
    if os.path.exists(os.path.join(ROOT, "native", "_pe_build.py")):
        return ["native/_pe_build.py:ffibuilder"]
    return []


setup(ext_modules=_ext_modules(), cffi_modules=_cffi_modules())
