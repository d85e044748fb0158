// <immintrin.h>, included through this header everywhere in csrc/ so that one place handles
// its warnings: GCC 12 reports the AVX-512 intrinsics' own "undefined register" idiom
// (`__m512d __Y = __Y;` in avx512fintrin.h) as -Wuninitialized / -Wmaybe-uninitialized once
// inlined (GCC bug 105593, fixed in GCC 13). The warning's location is the header, so ignoring
// it around the include silences exactly those and nothing in qrt's own code, which the
// build's -Wall -Wextra (-Werror in CI, setup.py) still covers.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
