// GatherElements on float32 data (gather_elements.h): index check, then one (o, ., .) slab at a time.
#include "gather_elements.h"

#include <algorithm>

#include "index_check.h"
#include "work_pool.h"

namespace qrt {

namespace {

// Output elements per work item: a claim (one atomic add) is small beside the copy.
constexpr int64_t kItemElements = 16384;

}  // namespace

template <typename Index>
int64_t gather_elements_f32(const float* data, int64_t outer, int64_t da, int64_t inner, const Index* idx,
                            int64_t na, float* out, int threads) {
    const int64_t n = outer * na * inner;
    const int64_t bad = first_bad_index(idx, n, da);
    if (bad >= 0) return bad;
    const int64_t slab = na * inner;   // output elements per o
    const int64_t rows = std::max<int64_t>(1, kItemElements / std::max<int64_t>(slab, 1));
    const int nt = (threads > 1 && outer > 1 && n >= kGatherElementsParallelMinElements) ? threads : 1;
    parallel_items((outer + rows - 1) / rows, nt, [&](int64_t item) {
        for (int64_t o = item * rows; o < std::min(outer, (item + 1) * rows); ++o) {
            const float* d = data + o * da * inner;
            const Index* ix = idx + o * slab;
            float* y = out + o * slab;
            if (inner == 1) {   // the gather axis is the last: a lookup within one row of da
                for (int64_t a = 0; a < na; ++a) {
                    const int64_t r = static_cast<int64_t>(ix[a]);
                    y[a] = d[r < 0 ? r + da : r];
                }
                continue;
            }
            for (int64_t a = 0; a < na; ++a)
                for (int64_t i = 0; i < inner; ++i) {
                    const int64_t r = static_cast<int64_t>(ix[a * inner + i]);
                    y[a * inner + i] = d[(r < 0 ? r + da : r) * inner + i];
                }
        }
    });
    return -1;
}

template int64_t gather_elements_f32<int32_t>(const float*, int64_t, int64_t, int64_t, const int32_t*, int64_t,
                                               float*, int);
template int64_t gather_elements_f32<int64_t>(const float*, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                                               float*, int);

}  // namespace qrt
