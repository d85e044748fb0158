#!/usr/bin/env bash
# Build the native extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# native tests (and the bindings fuzz) against it.
#
#   tools/sanitize.sh [WORK_DIR] [-- extra pytest arguments]
#
# Nothing in the checkout changes: the Python packages and tests are copied to
# WORK_DIR/src (default: a new /tmp/qrt_sanitize.* directory), the extension is built there by
# setup.py (the project's own sources and flags, plus the sanitizer flags from CFLAGS /
# LDFLAGS) with its objects in WORK_DIR/build, and pytest runs in WORK_DIR/src. The in-place
# extension of `pip install -e .` (kernels/native_cpu/_native*.so) is neither rebuilt nor used.
#
# Python itself is not built with ASan, so the ASan runtime must be loaded first, with
# LD_PRELOAD (and libstdc++ with it, see below); leak detection is off (the interpreter keeps its objects until exit). Any ASan
# report, and any UBSan report (halt_on_error=1), aborts the test process, so pytest's exit
# status is the verdict. Environment: PYTHON (default: python3), CC/CXX (default: gcc/g++).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
if [[ $# -gt 0 && $1 != "--" ]]; then
    WORK=$1
    shift
else
    WORK=$(mktemp -d /tmp/qrt_sanitize.XXXXXX)
fi
[[ ${1:-} == "--" ]] && shift
mkdir -p "$WORK/src" "$WORK/build"

# 1. the tree, without build outputs (the in-place .so above all: the copy must import ours)
for path in pyproject.toml setup.py README.md csrc runtime kernels tests; do
    cp -r "$ROOT/$path" "$WORK/src/"
done
find "$WORK/src" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

# 2. the sanitized build. The flags go in CFLAGS and CXXFLAGS: setuptools compiles C++ with
# CXXFLAGS where it has them (recent setuptools; older ones append CFLAGS), and LDFLAGS for the
# link. Frame pointers for readable reports (setup.py's own -O3 comes later on the command line
# and wins; the reports stay usable). QRT_REQUIRE_NATIVE turns a failed build into an error.
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
(
    cd "$WORK/src"
    CC=${CC:-gcc} CXX=${CXX:-g++} CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="$SAN" QRT_REQUIRE_NATIVE=1 \
        "$PYTHON" setup.py -q build_ext --build-lib "$WORK/src" --build-temp "$WORK/build"
)
SO=$(ls "$WORK"/src/kernels/native_cpu/_native*.so)
# the code must really be instrumented (a linked libasan alone proves nothing)
SYMBOLS=$(nm -D --undefined-only "$SO")
if [[ $SYMBOLS != *__asan_report_load* || $SYMBOLS != *__ubsan_handle* ]]; then
    echo "error: $SO is not instrumented (the compiler did not get the sanitizer flags)" >&2
    exit 1
fi
# libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw interceptor
# must find the real one when it starts ("CHECK failed: ... real___cxa_throw" otherwise, at
# the first C++ exception, i.e. the first argument a binding refuses)
PRELOAD="$("${CXX:-g++}" -print-file-name=libasan.so) $("${CXX:-g++}" -print-file-name=libstdc++.so)"
echo "sanitized extension: $SO"
echo "LD_PRELOAD: $PRELOAD"

# 3. the native tests against it (the fuzz test's subprocess inherits the environment)
cd "$WORK/src"
export LD_PRELOAD=$PRELOAD
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$PYTHON" -c "import kernels.native_cpu._native as m, sys; assert m.__file__ == sys.argv[1], m.__file__" "$SO"
# --capture=sys: pytest's default fd capture would swallow a sanitizer's report when the
# process aborts
# test_planner is left out: its real-timing case checks which kernel is faster, which an
# instrumented build does not tell (the native kernels it runs are covered by the others).
exec "$PYTHON" -m pytest tests -q -x -k "native and not test_planner" -p no:cacheprovider --capture=sys "$@"
