"""Build of the optional native extension ``kernels.native_cpu._native``.

All metadata (name, version, dependencies, packages, console script) is in pyproject.toml;
this file exists only for the C++ extension, which setuptools cannot declare there.

The extension is optional by design: qrt must install and run (reference and numba backends)
on a machine with no C++ compiler, a broken one, or no pybind11 at build time. In each of
those cases the build prints one warning and goes on; at run time the registry reports the
native backend as unavailable with kernels.native_cpu.probe()'s reason.

Environment:
  QRT_REQUIRE_NATIVE=1   turn a failed native build into an error (for checking a build).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

EXT_NAME = "kernels.native_cpu._native"
HERE = os.path.dirname(os.path.abspath(__file__))
# Every csrc/*.cpp goes into the one module (bindings.cpp holds PYBIND11_MODULE), so adding
# a kernel is adding a file. Headers are listed so that editing one triggers a rebuild and
# the sdist carries it. Paths stay relative: setuptools refuses absolute source paths.
EXT_SOURCES = sorted(glob.glob("csrc/*.cpp", root_dir=HERE))
EXT_HEADERS = sorted(glob.glob("csrc/*.h", root_dir=HERE) + glob.glob("csrc/*.hpp", root_dir=HERE))
REQUIRE_NATIVE = os.environ.get("QRT_REQUIRE_NATIVE", "") not in ("", "0")


def _warn(reason: str) -> None:
    if REQUIRE_NATIVE:
        raise SystemExit(f"qrt: native extension build failed (QRT_REQUIRE_NATIVE is set): {reason}")
    msg = f"qrt: native extension not built: {reason}; the native backend will be unavailable"
    # stderr, with a blank line around it, so it stands out in `pip install -v` logs.
    print(f"\n{msg}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure to build an extension into a warning.

    Failures are caught in two places: build_extension (a compile or link error) and run
    (no compiler found at all, which distutils raises before any extension is tried; and the
    in-place copy of an editable install). A failed extension is dropped from the outputs, so
    neither a wheel nor an editable install goes looking for a file that was never made.
    """

    def run(self) -> None:
        self._failed: set[str] = set()
        inplace = self.inplace  # setuptools clears it while building and may not restore it
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any failure means "no native backend", not "no qrt"
            self._failed.update(ext.name for ext in self.extensions)
            _warn(f"{type(e).__name__}: {e}")
        self.inplace = inplace
        if self._failed:
            self._remove_stale(self._failed)

    def _remove_stale(self, names: set[str]) -> None:
        # A .so left by an earlier, successful build would otherwise be shipped or imported
        # silently and run old C++ code: in build/lib (which a wheel copies whole) and, for an
        # editable install, next to the sources. Remove both, so that the failure shows as
        # "native backend unavailable" instead.
        saved = self.inplace
        paths = []
        for inplace in (False, True) if saved else (False,):
            self.inplace = inplace  # get_ext_fullpath answers for the current mode
            paths += [self.get_ext_fullpath(name) for name in sorted(names)]
        self.inplace = saved
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
                print(f"qrt: removed stale native extension {path}", file=sys.stderr, flush=True)

    def build_extension(self, ext) -> None:
        # Optimisation flags depend on the compiler, known only now. -O3 comes after the
        # interpreter's own CFLAGS, so it wins. Never -march=native: the wheel or editable
        # build must run on every x86-64; wider ISAs are dispatched at run time on
        # kernels.native_cpu.cpu_features().
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = [*ext.extra_compile_args, "/O2"]
        else:
            # -ffp-contract=off: the int8 epilogue must round after each float64 multiply and
            # add, as the reference does; a fused multiply-add (which GCC forms by default in
            # functions compiled for FMA) would round once and change the last bit.
            ext.extra_compile_args = [*ext.extra_compile_args, "-O3", "-ffp-contract=off", "-Wall", "-Wextra"]
            # QRT_WERROR=1 (the README's test command, hence CI): a warning fails the build. Off
            # for plain installs: a newer compiler's new warning must not stop a user's install.
            if os.environ.get("QRT_WERROR") == "1":
                ext.extra_compile_args = [*ext.extra_compile_args, "-Werror"]
            # OpenMP gives the native kernels' default thread count and the peak probe's team
            # (the kernels themselves run on csrc/work_pool.h); without it the default is one
            # thread, and a session's threads= still applies.
            if _accepts_openmp(self.compiler, self.build_temp):
                ext.extra_compile_args = [*ext.extra_compile_args, "-fopenmp"]
                ext.extra_link_args = [*ext.extra_link_args, "-fopenmp"]
            else:
                print("qrt: the C++ compiler does not accept -fopenmp; the native kernels will default "
                      "to one thread (a session's threads= still sets more)", file=sys.stderr, flush=True)
        # QRT_EXTRA_CFLAGS / QRT_EXTRA_LDFLAGS (space-separated), last so they win: e.g. the
        # sanitizer build of tests/test_sanitizers.py (-fsanitize=address,undefined -O1)
        ext.extra_compile_args = [*ext.extra_compile_args, *os.environ.get("QRT_EXTRA_CFLAGS", "").split()]
        ext.extra_link_args = [*ext.extra_link_args, *os.environ.get("QRT_EXTRA_LDFLAGS", "").split()]
        _compile_in_parallel(self.compiler)
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - see run()
            self._failed.add(ext.name)
            _warn(f"{type(e).__name__}: {e}")

    def _without_failed(self, method):
        # Call a base-class method that walks self.extensions with the failed ones left out.
        failed = getattr(self, "_failed", set())
        kept = self.extensions
        self.extensions = [ext for ext in kept if ext.name not in failed]
        try:
            return method()
        finally:
            self.extensions = kept

    def copy_extensions_to_source(self) -> None:
        # Editable installs (pip install -e) copy the built .so next to the sources; skip the
        # extensions that did not build instead of failing on the missing file.
        self._without_failed(super().copy_extensions_to_source)

    def get_outputs(self) -> list[str]:
        return self._without_failed(super().get_outputs)

    def get_output_mapping(self) -> dict[str, str]:
        # Used by setuptools' editable_wheel (PEP 660) to map built files into the install.
        return self._without_failed(super().get_output_mapping)


def _compile_in_parallel(compiler) -> None:
    """Make ``compiler.compile`` build an extension's sources on every usable CPU at once
    (distutils compiles them one after another: 21 files took 2.5 min on 2 cores). Uses the
    compiler's own per-file step (_setup_compile / _compile, present in setuptools'
    distutils), so flags and dependency checks are unchanged; where those are missing the
    compiler is left as it is."""
    if getattr(compiler, "_qrt_parallel", False) or not all(
            hasattr(compiler, a) for a in ("_setup_compile", "_get_cc_args", "_compile")):
        return
    from concurrent.futures import ThreadPoolExecutor
    jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            if obj in build:
                src, ext = build[obj]
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
        print(f"qrt: compiling {len(build)} C++ file(s) of the native backend on {jobs} CPU(s)",
              file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            list(pool.map(one, objects))       # list(): re-raises the first compile error
        return objects
    compiler.compile = compile
    compiler._qrt_parallel = True


def _accepts_openmp(compiler, tmp_dir: str) -> bool:
    """Whether ``compiler`` compiles and links a small OpenMP program with -fopenmp (GCC, and
    clang where libomp is installed; Apple's clang without libomp does not)."""
    import tempfile
    os.makedirs(tmp_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        src = os.path.join(d, "omp_check.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint qrt_omp_check() { return omp_get_max_threads(); }\n")
        try:
            objs = compiler.compile([src], output_dir=d, extra_postargs=["-fopenmp"])
            compiler.link_shared_object(objs, os.path.join(d, "omp_check.so"), extra_postargs=["-fopenmp"])
        except Exception:  # noqa: BLE001 - any failure means "no OpenMP", not "no extension"
            return False
    return True


def _extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError as e:
        _warn(f"pybind11 is not importable at build time ({e})")
        return []
    if "csrc/bindings.cpp" not in EXT_SOURCES:
        _warn(f"csrc/bindings.cpp not found next to {os.path.basename(__file__)}")
        return []
    return [
        Pybind11Extension(
            EXT_NAME,
            sources=EXT_SOURCES,
            depends=EXT_HEADERS,
            include_dirs=["csrc"],
            cxx_std=17,  # plain C++17: the oldest compilers of supported Linux distributions have it
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
