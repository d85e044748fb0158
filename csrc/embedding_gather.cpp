// Gather on a quantized table (embedding_gather.h): index check, then one row at a time.
#include "embedding_gather.h"

#include <algorithm>

#include "index_check.h"
#include "work_pool.h"

namespace qrt {

namespace {


template <typename Index>
inline int64_t row_of(const Index* idx, int64_t i, int64_t v) {
    const int64_t r = static_cast<int64_t>(idx[i]);
    return r < 0 ? r + v : r;
}

// In a model the table (all-MiniLM-L6-v2's words: 30522 x 384 int8, 11.7 MB) is out of the
// caches by the next run, and each row is a random one: reading them one after the other waits
// on memory once per row. So row i + kGatherPrefetchRows is asked for while row i is written.
// Measured in all-MiniLM-L6-v2 at 8 x 128 (1024 rows), 2 threads, Zen 4: RESULTS.md, "Session
// steps bound in C++", the embedding rows.
constexpr int64_t kGatherPrefetchRows = 8;

inline void prefetch_bytes(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

// Rows per work item: about kGatherItemElements output elements, so that a claim (one atomic
// add) is small beside the item's work, and a row of any width is one item at most.
constexpr int64_t kGatherItemElements = 16384;

// fn(i) for every row i of n, on the work pool (csrc/work_pool.h) above
// kGatherParallelMinElements output elements, else on the calling thread.
template <typename RowFn>
void for_rows(int64_t n, int64_t d, int threads, const RowFn& fn) {
    const int nt = (threads > 1 && n > 1 && n * d >= kGatherParallelMinElements) ? threads : 1;
    const int64_t rows = std::max<int64_t>(1, kGatherItemElements / std::max<int64_t>(d, 1));
    parallel_items((n + rows - 1) / rows, nt, [&](int64_t item) {
        for (int64_t i = item * rows; i < std::min(n, (item + 1) * rows); ++i) fn(i);
    });
}

}  // namespace

template <typename Index>
int64_t gather_int8_rows(const int8_t* qdata, const float* scale, const int8_t* zero_point, bool per_row,
                         int64_t v, int64_t d, const Index* idx, int64_t n, float* out, int threads) {
    const int64_t bad = first_bad_index(idx, n, v);
    if (bad >= 0) return bad;
    for_rows(n, d, threads, [&](int64_t i) {
        // every index was checked above: a row ahead is a valid address
        if (i + kGatherPrefetchRows < n) prefetch_bytes(qdata + row_of(idx, i + kGatherPrefetchRows, v) * d, d);
        const int64_t r = row_of(idx, i, v);
        const int64_t s_row = per_row ? r : 0;
        const float s = scale[s_row];
        const int32_t z = zero_point ? static_cast<int32_t>(zero_point[s_row]) : 0;
        const int8_t* q = qdata + r * d;
        float* o = out + i * d;
        for (int64_t k = 0; k < d; ++k) o[k] = static_cast<float>(static_cast<int32_t>(q[k]) - z) * s;
    });
    return -1;
}

template <typename Index>
int64_t gather_int4_rows(const uint8_t* qdata, const float* scale, const uint8_t* zero_point, int64_t v,
                         int64_t d, int64_t group_size, const Index* idx, int64_t n, float* out, int threads) {
    const int64_t bad = first_bad_index(idx, n, v);
    if (bad >= 0) return bad;
    const int64_t groups = (d + group_size - 1) / group_size;
    const int64_t row_bytes = groups * group_size / 2;
    // symmetric: a two's complement nibble is (u ^ 8) - 8; asymmetric: u - zp
    const int32_t sbit = zero_point ? 0 : 8;
    for_rows(n, d, threads, [&](int64_t i) {
        if (i + kGatherPrefetchRows < n) prefetch_bytes(qdata + row_of(idx, i + kGatherPrefetchRows, v) * row_bytes, row_bytes);
        const int64_t r = row_of(idx, i, v);
        const uint8_t* q = qdata + r * row_bytes;
        const float* s = scale + r * groups;
        const uint8_t* zp = zero_point ? zero_point + r * groups : nullptr;
        float* o = out + i * d;
        for (int64_t j = 0; j < groups; ++j) {
            const int32_t z = (zp ? static_cast<int32_t>(zp[j]) : 0) + sbit;
            const float sj = s[j];
            const int64_t k1 = std::min(d, (j + 1) * group_size);
            for (int64_t k = j * group_size; k < k1; ++k) {
                const int32_t byte = q[k >> 1];
                const int32_t nib = ((byte >> ((k & 1) * 4)) & 15) ^ sbit;
                o[k] = static_cast<float>(nib - z) * sj;
            }
        }
    });
    return -1;
}

template int64_t gather_int8_rows<int32_t>(const int8_t*, const float*, const int8_t*, bool, int64_t, int64_t,
                                           const int32_t*, int64_t, float*, int);
template int64_t gather_int8_rows<int64_t>(const int8_t*, const float*, const int8_t*, bool, int64_t, int64_t,
                                           const int64_t*, int64_t, float*, int);
template int64_t gather_int4_rows<int32_t>(const uint8_t*, const float*, const uint8_t*, int64_t, int64_t, int64_t,
                                           const int32_t*, int64_t, float*, int);
template int64_t gather_int4_rows<int64_t>(const uint8_t*, const float*, const uint8_t*, int64_t, int64_t, int64_t,
                                           const int64_t*, int64_t, float*, int);

}  // namespace qrt
