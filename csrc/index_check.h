// Index checks shared by the gathers (embedding_gather.cpp, gather_elements.cpp).
#pragma once

#include <cstdint>

namespace qrt {

// The first position of idx (n,) outside [-v, v), or -1. First one pass without an early
// exit, which the compiler vectorises (DeBERTa's GatherElements checks 196 K indices a call);
// only when it finds a bad index, a scan for the first.
template <typename Index>
int64_t first_bad_index(const Index* idx, int64_t n, int64_t v) {
    bool bad = false;
    for (int64_t e = 0; e < n; ++e) {
        const int64_t r = static_cast<int64_t>(idx[e]);
        bad |= (r < -v) | (r >= v);
    }
    if (!bad) return -1;
    for (int64_t e = 0; e < n; ++e) {
        const int64_t r = static_cast<int64_t>(idx[e]);
        if (r < -v || r >= v) return e;
    }
    return -1;
}

}  // namespace qrt
