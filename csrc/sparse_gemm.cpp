// Sparse int8 Linear: layout conversion with index checks, plan-time packing (ELL, quad tiles),
// the scalar path, path choice and the threaded driver. Numerics and layouts: sparse_gemm.h;
// the AVX-512 kernels are in sparse_gemm_avx512.cpp, the AVX2 one in sparse_gemm_avx2.cpp.
#include "sparse_gemm.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>


#include "cpu_features.h"
#include "sparse_gemm_kernels.h"
#include "work_pool.h"

namespace qrt {

using int8_detail::Epilogue;
using sparse_detail::Problem;

namespace {


[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string str(int64_t v) { return std::to_string(v); }

void check_dims(int64_t n, int64_t k) {
    if (n < 1 || k < 1) fail("sparse weight must have N >= 1 and K >= 1, got (" + str(n) + ", " + str(k) + ")");
    if (k > kMaxExactK) fail("sparse weight: K = " + str(k) + " is too large for an exact integer accumulation");
}

// indptr (rows + 1,): starts at 0, never decreases, ends at `stored`; per row, indices strictly
// increasing and in [0, ncols). `what` names the unit ("column" / "block column").
void check_compressed(int64_t rows, int64_t ncols, const int64_t* indptr, const int64_t* indices, int64_t stored,
                      const char* what) {
    if (indptr[0] != 0) fail("indptr[0] = " + str(indptr[0]) + ", expected 0");
    for (int64_t r = 0; r < rows; ++r)
        if (indptr[r + 1] < indptr[r])
            fail("indptr decreases at row " + str(r) + ": indptr[" + str(r) + "] = " + str(indptr[r]) + " > indptr[" +
                 str(r + 1) + "] = " + str(indptr[r + 1]));
    if (indptr[rows] != stored)
        fail("indptr[-1] = " + str(indptr[rows]) + " but " + str(stored) + " entries are stored");
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = indptr[r]; j < indptr[r + 1]; ++j) {
            if (indices[j] < 0 || indices[j] >= ncols)
                fail("indices[" + str(j) + "] = " + str(indices[j]) + " is out of range [0, " + str(ncols) + ") (" +
                     what + ")");
            if (j > indptr[r] && indices[j] <= indices[j - 1])
                fail("indices of row " + str(r) + " are not strictly increasing at indices[" + str(j) + "] = " +
                     str(indices[j]));
        }
    }
}

}  // namespace

// --- layout conversion -------------------------------------------------------------------------

SparseRows sparse_rows_csr(int64_t n, int64_t k, const int64_t* indptr, const int64_t* indices, int64_t nnz,
                           const int8_t* qdata) {
    check_dims(n, k);
    check_compressed(n, k, indptr, indices, nnz, "column");
    SparseRows rows;
    rows.n = n;
    rows.k = k;
    rows.indptr.assign(indptr, indptr + n + 1);
    rows.cols.assign(indices, indices + nnz);
    rows.vals.assign(qdata, qdata + nnz);
    return rows;
}

SparseRows sparse_rows_bsr(int64_t n, int64_t k, int64_t r, int64_t c, const int64_t* indptr,
                           const int64_t* indices, int64_t nb, const int8_t* qdata) {
    check_dims(n, k);
    if (r < 1 || c < 1 || n % r || k % c)
        fail("block_shape (" + str(r) + ", " + str(c) + ") does not tile the 2-D view (" + str(n) + ", " + str(k) + ")");
    check_compressed(n / r, k / c, indptr, indices, nb, "block column");
    SparseRows rows;
    rows.n = n;
    rows.k = k;
    rows.indptr.resize(n + 1);
    rows.cols.resize(nb * r * c);
    rows.vals.resize(nb * r * c);
    rows.indptr[0] = 0;
    int64_t j = 0;
    // row br * R + i: block b of block row br contributes its row i, columns bcol * C + 0..C-1;
    // block columns ascend, so the columns do
    for (int64_t br = 0; br < n / r; ++br) {
        for (int64_t i = 0; i < r; ++i) {
            for (int64_t b = indptr[br]; b < indptr[br + 1]; ++b) {
                for (int64_t jj = 0; jj < c; ++jj, ++j) {
                    rows.cols[j] = static_cast<int32_t>(indices[b] * c + jj);
                    rows.vals[j] = qdata[(b * r + i) * c + jj];
                }
            }
            rows.indptr[br * r + i + 1] = j;
        }
    }
    return rows;
}

int nm_meta_bits(int64_t mm) {
    int need = 1;
    while ((int64_t(1) << need) < mm) ++need;   // ceil(log2(mm)), at least 1
    int b = 1;
    while (b < need) b *= 2;
    return b;
}

SparseRows sparse_rows_nm(int64_t n, int64_t k, int64_t nn, int64_t mm, const uint8_t* meta, int64_t meta_cols,
                          const int8_t* qdata) {
    check_dims(n, k);
    if (!(1 <= nn && nn < mm && mm <= 256)) fail("n:m must satisfy 1 <= n < m <= 256, got " + str(nn) + ":" + str(mm));
    if (k % mm) fail("m = " + str(mm) + " does not divide K = " + str(k));
    const int bits = nm_meta_bits(mm);
    const int64_t count = k / mm * nn;   // stored values (position codes) per row
    if (meta_cols != (count * bits + 7) / 8)
        fail("meta has " + str(meta_cols) + " bytes per row, expected " + str((count * bits + 7) / 8));
    const unsigned mask = (1u << bits) - 1;
    SparseRows rows;
    rows.n = n;
    rows.k = k;
    rows.indptr.resize(n + 1);
    rows.cols.resize(n * count);
    rows.vals.assign(qdata, qdata + n * count);
    for (int64_t row = 0; row <= n; ++row) rows.indptr[row] = row * count;
    for (int64_t row = 0; row < n; ++row) {
        const uint8_t* mrow = meta + row * meta_cols;
        for (int64_t j = 0; j < count; ++j) {
            // code j of the row's little-endian bit stream: bits (j b) % 8 .. of byte (j b) / 8
            const int64_t bit = j * bits;
            const int64_t pos = (mrow[bit / 8] >> (bit % 8)) & mask;
            const int64_t g = j / nn;
            if (pos >= mm)
                fail("meta row " + str(row) + ", group " + str(g) + " holds position " + str(pos) + ", not < m = " + str(mm));
            if (j % nn && pos <= rows.cols[row * count + j - 1] - g * mm)
                fail("meta row " + str(row) + ", group " + str(g) + ": positions are not strictly ascending");
            rows.cols[row * count + j] = static_cast<int32_t>(g * mm + pos);
        }
        const int64_t used = count * bits % 8;   // bits of the last byte holding codes (0: all)
        if (used && (mrow[meta_cols - 1] >> used))
            fail("meta row " + str(row) + ": the unused trailing bits of its last byte are not 0");
    }
    return rows;
}

// --- packing -----------------------------------------------------------------------------------

namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// ELL over (block of 16 rows, segment of `seg` bytes) of `rows`. Counting (idx == nullptr):
// fills sptr (nblk * nseg + 1,) and returns the vector count; filling: writes the vectors at
// the offsets sptr gives into idx / val (zeroed by the caller). Byte lanes: up to 4 stored
// values of a row per vector; dword lanes: one column quad per vector (the 4 weights of
// k = 4 q .. 4 q + 3, zeros where the row stores nothing).
int64_t ell_build(const SparseRows& rows, int64_t nblk, int64_t seg, EllLanes lanes, std::vector<int64_t>& sptr,
                  uint8_t* idx, int8_t* val) {
    const bool fill = idx != nullptr;
    const int64_t nseg = (rows.k + seg - 1) / seg;
    const int64_t idx_bytes = lanes == EllLanes::byte ? 64 : 16;
    if (!fill) sptr.assign(nblk * nseg + 1, 0);
    std::vector<int64_t> cur(kSparseBlockRows);
    for (int64_t b = 0; b < nblk; ++b) {
        const int64_t r0 = b * kSparseBlockRows, nr = std::min(kSparseBlockRows, rows.n - r0);
        for (int64_t i = 0; i < nr; ++i) cur[i] = rows.indptr[r0 + i];
        for (int64_t s = 0; s < nseg; ++s) {
            const int64_t end = (s + 1) * seg;
            const int64_t base = sptr[b * nseg + s];
            int64_t vectors = 0;
            for (int64_t i = 0; i < nr; ++i) {
                const int64_t stop = rows.indptr[r0 + i + 1];
                int64_t units = 0, last_quad = -1;
                for (int64_t e = 0; cur[i] < stop && rows.cols[cur[i]] < end; ++cur[i], ++e) {
                    const int64_t col = rows.cols[cur[i]] - s * seg;   // 0 .. seg - 1
                    if (lanes == EllLanes::byte) {
                        units = e / 4 + 1;
                        if (fill) {
                            const int64_t at = (base + e / 4) * 64 + 4 * i + e % 4;   // vector e / 4, lane i, byte e % 4
                            idx[at] = static_cast<uint8_t>(col);
                            val[at] = rows.vals[cur[i]];
                        }
                    } else {
                        if (col / 4 != last_quad) {
                            last_quad = col / 4;
                            ++units;
                        }
                        if (fill) {
                            const int64_t v = base + units - 1;
                            idx[v * idx_bytes + i] = static_cast<uint8_t>(col / 4);
                            val[v * 64 + 4 * i + col % 4] = rows.vals[cur[i]];
                        }
                    }
                }
                vectors = std::max(vectors, units);
            }
            if (!fill) sptr[b * nseg + s + 1] = base + vectors;
        }
    }
    return sptr.back();
}

// Byte-lane ELL over sliding 64-byte windows of `rows` (sparse_gemm.h): per block, each vector's
// window starts at the lowest column any of the 16 rows still has to place (at most
// round_up(K, 64) - 64, so the window stays inside a row of u), and each row places up to 4 of
// its next stored values inside the window. Fixed segments make every segment cost as many
// vectors as its fullest row needs there; a window follows the rows, so at 90% random masks a
// block needs ~0.69x the vectors of 64-byte segments (0.83x of 128-byte ones) at the same 128
// bytes a vector. Counting (idx == nullptr): fills sptr (nblk + 1,) and returns the vector
// count; filling: writes idx / val (zeroed by the caller) and woff (vectors,).
int64_t ell_build_windows(const SparseRows& rows, int64_t nblk, std::vector<int64_t>& sptr, uint8_t* idx, int8_t* val,
                          int32_t* woff) {
    const bool fill = idx != nullptr;
    const int64_t last = round_up(rows.k, kSparseSegmentNarrow) - kSparseSegmentNarrow;
    if (!fill) sptr.assign(nblk + 1, 0);
    std::vector<int64_t> cur(kSparseBlockRows), stop(kSparseBlockRows);
    for (int64_t b = 0; b < nblk; ++b) {
        const int64_t r0 = b * kSparseBlockRows, nr = std::min(kSparseBlockRows, rows.n - r0);
        for (int64_t i = 0; i < nr; ++i) {
            cur[i] = rows.indptr[r0 + i];
            stop[i] = rows.indptr[r0 + i + 1];
        }
        int64_t v = sptr[b];
        for (;; ++v) {
            int64_t o = rows.k;
            for (int64_t i = 0; i < nr; ++i)
                if (cur[i] < stop[i]) o = std::min<int64_t>(o, rows.cols[cur[i]]);
            if (o == rows.k) break;   // every row placed
            o = std::min(o, last);
            if (fill) woff[v] = static_cast<int32_t>(o);
            for (int64_t i = 0; i < nr; ++i)
                for (int64_t e = 0; e < 4 && cur[i] < stop[i] && rows.cols[cur[i]] < o + kSparseSegmentNarrow; ++e, ++cur[i])
                    if (fill) {
                        const int64_t at = v * 64 + 4 * i + e;   // lane i, byte e
                        idx[at] = static_cast<uint8_t>(rows.cols[cur[i]] - o);
                        val[at] = rows.vals[cur[i]];
                    }
        }
        if (!fill) sptr[b + 1] = v;
    }
    return sptr.back();
}

// Either builder: byte lanes over sliding windows for seg == kSparseWindows (lanes is then
// byte), else fixed segments of seg bytes with the given lanes. Counting or filling, as they do.
int64_t ell_build_form(const SparseRows& rows, int64_t nblk, EllLanes lanes, int64_t seg, std::vector<int64_t>& sptr,
                       uint8_t* idx, int8_t* val, int32_t* woff) {
    return seg == kSparseWindows ? ell_build_windows(rows, nblk, sptr, idx, val, woff)
                                 : ell_build(rows, nblk, seg, lanes, sptr, idx, val);
}

void ell_pack(SparseInt8Weight& w, EllLanes lanes, int64_t seg) {
    w.windows = seg == kSparseWindows;
    w.lanes = w.windows ? EllLanes::byte : lanes;
    w.seg = w.windows ? kSparseSegmentNarrow : seg;
    w.nseg = w.windows ? 1 : (w.k + seg - 1) / seg;
    w.ell_vectors = ell_build_form(w.rows, w.nblk, w.lanes, seg, w.sptr, nullptr, nullptr, nullptr);
    const int64_t idx_bytes = w.lanes == EllLanes::byte ? 64 : 16;
    w.ell_idx.allocate(static_cast<size_t>(w.ell_vectors * idx_bytes));
    w.ell_val.allocate(static_cast<size_t>(w.ell_vectors * 64));
    if (w.windows) w.woff.allocate(static_cast<size_t>(std::max<int64_t>(1, w.ell_vectors)));
    std::fill(w.ell_idx.get(), w.ell_idx.get() + w.ell_idx.size, uint8_t(0));   // unused lanes: weight 0
    std::fill(w.ell_val.get(), w.ell_val.get() + w.ell_val.size, int8_t(0));
    ell_build_form(w.rows, w.nblk, w.lanes, seg, w.sptr, w.ell_idx.get(), w.ell_val.get(), w.woff.get());
}

// Quads of groups of G rows: the sorted union of the column quads the G rows store.
void quads_pack(SparseInt8Weight& w, int g) {
    const SparseRows& rows = w.rows;
    const int64_t groups = w.n / g, k4 = (w.k + 3) / 4;
    std::vector<int64_t> slot(k4, -1);   // quad -> its index in the current group's list
    std::vector<int64_t> list;
    std::vector<std::vector<uint16_t>> per_group(groups);
    w.qptr.assign(groups + 1, 0);
    for (int64_t gi = 0; gi < groups; ++gi) {
        list.clear();
        for (int64_t r = gi * g; r < (gi + 1) * g; ++r)
            for (int64_t j = rows.indptr[r]; j < rows.indptr[r + 1]; ++j)
                if (slot[rows.cols[j] / 4] < 0) {
                    slot[rows.cols[j] / 4] = 0;
                    list.push_back(rows.cols[j] / 4);
                }
        std::sort(list.begin(), list.end());
        per_group[gi].assign(list.begin(), list.end());
        for (int64_t q : list) slot[q] = -1;
        w.qptr[gi + 1] = w.qptr[gi] + static_cast<int64_t>(list.size());
    }
    w.quad_rows = g;
    w.nquads = w.qptr[groups];
    w.qcol.resize(w.nquads);
    w.qw.allocate(static_cast<size_t>(w.nquads * g * 4));
    std::fill(w.qw.get(), w.qw.get() + w.qw.size, int8_t(0));
    for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t q0 = w.qptr[gi];
        const auto& qs = per_group[gi];
        for (size_t i = 0; i < qs.size(); ++i) {
            w.qcol[q0 + i] = qs[i];
            slot[qs[i]] = q0 + static_cast<int64_t>(i);
        }
        for (int64_t r = gi * g; r < (gi + 1) * g; ++r)
            for (int64_t j = rows.indptr[r]; j < rows.indptr[r + 1]; ++j) {
                const int64_t col = rows.cols[j];
                w.qw[(slot[col / 4] * g + (r - gi * g)) * 4 + col % 4] = rows.vals[j];
            }
        for (uint16_t q : qs) slot[q] = -1;
    }
    w.quads_no_min = std::none_of(w.qw.get(), w.qw.get() + w.qw.size, [](int8_t v) { return v == -128; });
    w.quads_narrow = std::all_of(w.qw.get(), w.qw.get() + w.qw.size,
                                 [](int8_t v) { return v >= -kNarrowQMax && v <= kNarrowQMax; });
}

}  // namespace

bool sparse_has_vbmi() {
#if QRT_INT8_X86_SIMD
    static const bool vbmi = detect_cpu_features().avx512_vbmi;
    return vbmi;
#else
    return false;
#endif
}

bool sparse_byte_lanes_supported() {
    return sparse_has_vbmi() || !int8_isa_supported(Int8Isa::avx512_vnni);
}

std::pair<double, double> sparse_permute_probe() {
#if QRT_INT8_X86_SIMD
    if (sparse_has_vbmi() && int8_isa_supported(Int8Isa::avx512_vnni)) {
        // alternate the two loops, best of 5 each: a busy or frequency-shifting core slows
        // both alike, and the best run is the one least disturbed
        double two = 1e30, one = 1e30;
        for (int rep = 0; rep < 5; ++rep) {
            two = std::min(two, sparse_detail::permute_pair_ns_avx512(true));
            one = std::min(one, sparse_detail::permute_pair_ns_avx512(false));
        }
        return {two, one};
    }
#endif
    return {0.0, 0.0};
}

namespace {

// vpermi2b's (permute, vpdpbusd) pair time over vpermb's, measured once per process
// (sparse_permute_probe); 0 without AVX-512 VBMI + VNNI.
double permute_gain() {
    static const double gain = [] {
        const auto [two, one] = sparse_permute_probe();
        return one > 0 ? two / one : 0.0;
    }();
    return gain;
}

}  // namespace

// The largest weight (bytes of its 128-byte-segment byte-lane vectors) the probe's tolerance
// applies to: 1 MiB, within the L2 of a core of every AVX-512 CPU qrt was measured on.
constexpr int64_t kSegmentToleranceBytes = int64_t(1) << 20;

double sparse_segment_tolerance(int64_t wide_vectors) {
    const double gain = permute_gain();   // the packer's rule: see its comment
    return gain >= 1.6 && wide_vectors * 128 <= kSegmentToleranceBytes ? std::min(0.9 * gain, 2.0) : 1.2;
}

int64_t sparse_byte_segment() {
    // Zen 4: vpermi2b + vpdpbusd 0.52-0.54 ns a pair, vpermb + vpdpbusd 0.36-0.39 (1.38-1.48x),
    // so 64-byte segments win although they need 6-18% more vectors (MiniLM's 80% weights); a
    // CPU whose two-table permute is as fast as the one-table one keeps 128 (fewer vectors).
    // The margin is small on purpose: the same Zen 4 VM also probes 0.56 / 0.48-0.50
    // (1.13-1.22x) at times (a busy host), and a 1.25x margin then packed a whole process's
    // weights over 128 bytes, which ran MiniLM's 80% model 2-26% slower than 64 in every round
    // measured (benchmarks/RESULTS.md, "The segment probe depended on the host's state"). The
    // packer's 1.2x vector-growth rule still leaves 64 where it would pad too much.
    // Sliding windows (0) wherever 128 would have been taken, and on AVX2-class and scalar
    // paths: X (Intel Xeon, Golden Cove) masked to AVX2, csr 90%, 1 / 2 threads, us, 64-byte
    // segments -> windows: (768, 3072) M = 1 42.3 -> 29.1 / 25.9 -> 18.1, M = 4 123 -> 86 / 68
    // -> 46; (768, 768) M = 4 31.5 -> 22.8 / 18.6 -> 14.0; (4096, 4096) M = 1 395 -> 230 / 193
    // -> 107 (M >= 8 runs the pairs there). On AVX-512 a window's tables are loaded per vector
    // and row, where a segment's stay in registers: as AVX-512 VNNI, 64-byte segments ->
    // windows, 2 threads: (768, 768) M = 1 3.2 -> 2.8, M = 16 12.1 -> 12.6; (3072, 768) M = 16
    // 34 -> 40; against 128-byte segments (the 16-45 MB LLM shapes): (4096, 4096) M = 1 66.7 ->
    // 43.7, M = 16 262 -> 224. So 64 stays where the probe favours vpermb; windows replace 128.
    if (!int8_isa_is_avx512_class(int8_current_isa())) return kSparseWindows;   // AVX2-class or scalar
    return permute_gain() > 1.05 ? kSparseSegmentNarrow : kSparseWindows;
}

namespace {

// The pairs (sparse_gemm_avx2.cpp): each row's stored weights two at a time in column order,
// the weights as two int16 halves of an int32 (the vpmaddwd operand, broadcast).
void pairs_pack(SparseInt8Weight& w) {
    const SparseRows& rows = w.rows;
    w.pptr.assign(w.n + 1, 0);
    for (int64_t r = 0; r < w.n; ++r) w.pptr[r + 1] = w.pptr[r] + (rows.indptr[r + 1] - rows.indptr[r] + 1) / 2;
    w.npairs = w.pptr[w.n];
    w.pcol.assign(2 * w.npairs, 0);
    const int64_t unit = w.pcol_x4() ? 4 : 1;
    w.pw.allocate(std::max<int64_t>(1, w.npairs));
    const auto half = [](int8_t v) { return static_cast<uint32_t>(static_cast<uint16_t>(static_cast<int16_t>(v))); };
    for (int64_t r = 0; r < w.n; ++r) {
        const int64_t j1 = rows.indptr[r + 1];
        int64_t q = w.pptr[r];
        for (int64_t j = rows.indptr[r]; j < j1; j += 2, ++q) {
            const bool two = j + 1 < j1;   // else the last column again, with weight 0
            w.pcol[2 * q] = static_cast<uint16_t>(unit * rows.cols[j]);
            w.pcol[2 * q + 1] = static_cast<uint16_t>(unit * rows.cols[two ? j + 1 : j]);
            w.pw[q] = static_cast<int32_t>(half(rows.vals[j]) | (half(two ? rows.vals[j + 1] : 0) << 16));
        }
    }
    w.has_pairs = true;
}

}  // namespace

size_t SparseInt8Weight::nbytes() const {
    return rows.indptr.size() * sizeof(int64_t) + rows.cols.size() * sizeof(int32_t) + rows.vals.size() +
           rowsum.size * sizeof(int64_t) + scale.size * sizeof(double) + corr0.size * sizeof(int32_t) +
           sptr.size() * sizeof(int64_t) + woff.size * sizeof(int32_t) +
           ell_idx.size + ell_val.size + qptr.size() * sizeof(int64_t) + qcol.size() * sizeof(uint16_t) + qw.size +
           pptr.size() * sizeof(int64_t) + pcol.size() * sizeof(uint16_t) + pw.size * sizeof(int32_t);
}

SparseInt8Weight sparse_int8_pack(SparseRows rows, const float* scale, const SparsePackOptions& opt) {
    SparseInt8Weight w;
    w.n = rows.n;
    w.k = rows.k;
    w.nnz = rows.nnz();
    w.rows = std::move(rows);
    w.npad = round_up(w.n, kSparseBlockRows);
    w.rowsum.allocate(w.npad);
    w.scale.allocate(w.npad);
    for (int64_t r = 0; r < w.npad; ++r) {
        int64_t sum = 0;
        if (r < w.n)
            for (int64_t j = w.rows.indptr[r]; j < w.rows.indptr[r + 1]; ++j) sum += w.rows.vals[j];
        w.rowsum[r] = sum;
        w.scale[r] = r < w.n ? static_cast<double>(scale[r]) : 0.0;
    }
    w.corr0.allocate(w.npad);
    for (int64_t r = 0; r < w.npad; ++r) w.corr0[r] = static_cast<int32_t>(static_cast<uint32_t>(128 * w.rowsum[r]));
    w.nblk = w.npad / kSparseBlockRows;
    w.nseg = (w.k + kSparseSegment - 1) / kSparseSegment;
    if (!(opt.segment == -1 || opt.segment == kSparseWindows || opt.segment == kSparseSegmentNarrow ||
          opt.segment == kSparseSegment))
        fail("segment must be -1 (auto), 0 (sliding windows), 64 or 128, got " + str(opt.segment));
    if (opt.lanes == static_cast<int>(EllLanes::byte) && !sparse_byte_lanes_supported())
        fail("ELL byte lanes need AVX-512 VBMI (vpermi2b) on a CPU with AVX-512 VNNI, and this one does not have it");
    if (opt.quad_rows == 4 && w.n % 4) fail("quads of 4 rows need N % 4 == 0, got N = " + str(w.n));
    if (!(opt.quad_rows >= -1 && opt.quad_rows <= 4 && opt.quad_rows != 2 && opt.quad_rows != 3))
        fail("quad_rows must be -1 (auto), 0, 1 or 4, got " + str(opt.quad_rows));
    if (opt.pairs < -1 || opt.pairs > 1) fail("pairs must be -1 (auto), 0 or 1, got " + str(opt.pairs));
    // the vector structures only for K the int32 lanes are exact for (larger K: scalar only)
    if (w.k > kMaxKInt32) return w;

    if (opt.pairs == 1 || (opt.pairs < 0 && int8_isa_is_avx2_class(int8_current_isa()))) pairs_pack(w);

    int quad_rows = opt.quad_rows;
    if (quad_rows < 0)   // bsr blocks made of whole aligned column quads
        quad_rows = (opt.block_c > 0 && opt.block_c % 4 == 0) ? (opt.block_r % 4 == 0 ? 4 : 1) : 0;
    if (quad_rows > 0) quads_pack(w, quad_rows);

    int lanes = opt.lanes;
    int64_t byte_seg = opt.segment >= 0 ? opt.segment : sparse_byte_segment();
    const bool may_be_bytes = lanes < 0 || lanes == static_cast<int>(EllLanes::byte);
    if (opt.segment < 0 && may_be_bytes && byte_seg == kSparseSegmentNarrow &&
        int8_isa_is_avx512_class(int8_current_isa()) && sparse_byte_lanes_supported()) {
        // AVX-512: the narrow segments' faster permute pays for up to ~1.36x more vectors once a
        // vector serves several activation rows, but M = 1 streams each vector once, so there
        // every extra vector costs its bytes. Measured (Zen 4, 2 threads, 90% random masks, where
        // 64-byte segments need 1.20-1.21x the vectors): M = 1 8-19% slower, M = 4 even, M = 16
        // 5-9% faster; MiniLM's 80% weights (1.06-1.18x): M = 16 13%, M = 128 17% faster. So
        // 64 only below 1.2x there (the Zen 4 probe reads 1.13-1.48). Golden Cove cores (the
        // Xeon masked to AVX-512 VNNI) probe 2.05 (pairs of 0.62 and 0.30 ns): at 1.20x the
        // vectors 64 ran M = 16 1.43x faster and M = 1 4% slower, so where the probe reads
        // 1.6 or more the tolerance follows it (0.9 x the gain, at most 2x the vectors), for
        // weights whose vectors stay in a core's L2 (up to kSegmentToleranceBytes): a larger
        // one streams from memory at M = 1, where 64 then ran 1.2-1.6x slower (the 16-45 MB
        // LLM shapes; at M = 16 1.26-1.31x faster, at M = 1 on the MiniLM / BERT shapes 0-10%
        // slower; RESULTS.md, "The narrow segments on Golden Cove"). (The AVX2 kernel took 64
        // always: 1.18-1.29x faster at every M measured, M = 1 included, at 1.2x the vectors;
        // now windows.) Those measurements set 64 against 128; sliding windows, which need
        // fewer vectors than either (~0.82x of 128 at 90%), now take 128's place in this rule.
        std::vector<int64_t> counts;
        const int64_t narrow = ell_build(w.rows, w.nblk, kSparseSegmentNarrow, EllLanes::byte, counts, nullptr, nullptr);
        const int64_t wide = ell_build(w.rows, w.nblk, kSparseSegment, EllLanes::byte, counts, nullptr, nullptr);
        if (static_cast<double>(narrow) >= sparse_segment_tolerance(wide) * static_cast<double>(wide))
            byte_seg = kSparseWindows;   // where 128-byte segments would have been taken (sparse_byte_segment)
    }
    if (lanes < 0) {   // the denser of the two: byte lanes are 128 bytes per vector, dword lanes 80
        std::vector<int64_t> counts;
        const int64_t dword_bytes = ell_build(w.rows, w.nblk, kSparseSegment, EllLanes::dword, counts, nullptr, nullptr) * 80;
        const int64_t byte_bytes =
            sparse_byte_lanes_supported()
                ? ell_build_form(w.rows, w.nblk, EllLanes::byte, byte_seg, counts, nullptr, nullptr, nullptr) * 128
                : -1;
        lanes = static_cast<int>(byte_bytes >= 0 && byte_bytes < dword_bytes ? EllLanes::byte : EllLanes::dword);
    }
    if (lanes != static_cast<int>(EllLanes::none)) {
        // dword lanes index 32 quads of a 128-byte segment (vpermi2d); byte lanes either width
        ell_pack(w, static_cast<EllLanes>(lanes), lanes == static_cast<int>(EllLanes::byte) ? byte_seg : kSparseSegment);
        w.ell_no_min = std::none_of(w.ell_val.get(), w.ell_val.get() + w.ell_val.size, [](int8_t v) { return v == -128; });
        w.rows = SparseRows();   // the scalar path reads the ELL vectors from now on
        w.rows.n = w.n;
        w.rows.k = w.k;
        w.has_rows = false;
    }
    return w;
}

// --- the scalar path ---------------------------------------------------------------------------

namespace {

// Output rows [r0, r1) for every activation row, from the canonical rows; int64 accumulators,
// exact for any K.
void scalar_rows(const Problem& p, int64_t r0, int64_t r1) {
    const SparseRows& rows = p.w->rows;
    const int64_t n = p.w->n;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t j0 = rows.indptr[r], j1 = rows.indptr[r + 1];
        for (int64_t mm = 0; mm < p.m; ++mm) {
            const uint8_t* u = p.u + mm * p.ldu;
            int64_t raw = 0;
            for (int64_t j = j0; j < j1; ++j) raw += static_cast<int64_t>(rows.vals[j]) * u[rows.cols[j]];
            const int64_t acc = raw - p.ep.col_shift * p.w->rowsum[r];
            p.y[mm * n + r] = int8_detail::epilogue_value(acc, r, mm, p.ep);
        }
    }
}


// Block b (output rows 16 b ..) for every activation row, from the ELL vectors (the scalar
// path when the canonical rows were dropped): lane i of a vector is row 16 b + i, its 4 bytes
// weights at offsets (byte lanes) or the 4 columns of one quad (dword lanes) in the segment.
// int64 accumulators; padding lanes hold weight 0 at offset 0, inside the segment.
void scalar_ell_block(const Problem& p, int64_t b) {
    const SparseInt8Weight& w = *p.w;
    const bool bytes = w.lanes == EllLanes::byte;
    const int64_t r0 = b * kSparseBlockRows, nr = std::min(kSparseBlockRows, w.n - r0);
    for (int64_t mm = 0; mm < p.m; ++mm) {
        int64_t raw[kSparseBlockRows] = {};
        for (int64_t s = 0; s < w.nseg; ++s) {
            const uint8_t* row = p.u + mm * p.ldu + s * w.seg;
            for (int64_t v = w.sptr[b * w.nseg + s]; v < w.sptr[b * w.nseg + s + 1]; ++v) {
                const uint8_t* u = w.windows ? p.u + mm * p.ldu + w.woff[v] : row;
                const int8_t* val = w.ell_val.get() + v * 64;
                for (int64_t i = 0; i < kSparseBlockRows; ++i)
                    for (int64_t j = 0; j < 4; ++j) {
                        const int64_t off = bytes ? w.ell_idx[v * 64 + 4 * i + j] : 4 * w.ell_idx[v * 16 + i] + j;
                        raw[i] += static_cast<int64_t>(val[4 * i + j]) * u[off];
                    }
            }
        }
        for (int64_t i = 0; i < nr; ++i) {
            const int64_t acc = raw[i] - p.ep.col_shift * w.rowsum[r0 + i];
            p.y[mm * w.n + r0 + i] = int8_detail::epilogue_value(acc, r0 + i, mm, p.ep);
        }
    }
}

}  // namespace

// --- path choice and driver --------------------------------------------------------------------

namespace {

// From this many activation rows quad tiles (16 rows per vpdpbusd, but a 16-row tile and its
// transposes whatever M) beat ELL (a permute per vector and row). Measured on the 2-core Zen 4
// dev machine, one thread, 90%, (K, N) = (768, 3072), us: bsr 4x4 M = 4: ELL 23.8, tiles 40.9;
// M = 8: 42.6 / 43.6; M = 16: 82.7 / 54.3. bsr 1x4 (G = 1, 4 times the quads) M = 8: 49.9 /
// 67.4; M = 12: 63.1 / 52.0. (384, 1536) crosses at the same M.
constexpr int64_t kQuadTilesMinM4 = 8;    // G = 4
constexpr int64_t kQuadTilesMinM1 = 12;   // G = 1
// From this many activation rows the AVX2 quad tiles beat the AVX2 ELL kernel (and the pairs,
// at every M). Measured on Zen 3, best of 0.5 s, bsr 80% and 90%, (K, N) = (384, 1536) and
// (768, 3072), 1 and 2 threads, us (ELL / quad tiles): 4x4 80% (384, 1536) M = 2: 30.2 / 36.9,
// M = 4: 57.3 / 38.1; 1x4 80% M = 2: 36.5 / 48.0, M = 4: 70.1 / 49.0; every case crosses
// between M = 2 and 4 (benchmarks/RESULTS.md, "AVX2 quad tiles").
constexpr int64_t kQuadTilesAvx2MinM = 4;
// From this many activation rows the AVX2 pairs kernel (16 rows in lanes, whatever M) beats
// ELL on AVX2 (a lookup per vector and row). Measured: benchmarks/RESULTS.md, "AVX2 sparse: pairs".
constexpr int64_t kPairsMinM = 8;
// The same on the avx_vnni path, whose ELL step is one vpdpbusd a row (sparse_ell_half.h) while
// the pairs stay vpmaddwd. X (Intel Xeon) masked to AVX-VNNI, csr 90 %, 2 threads, us, ELL /
// pairs: M = 8 (384, 1536) 20.2 / 27.4, (768, 768) 18.8 / 24.4, (3072, 768) 61.1 / 80.3, (768,
// 3072) 68.6 / 81.2; M = 12 28.2 / 26.1, 28.7 / 26.4, 97.9 / 88.3, 95.8 / 83.1. (As AVX2 the
// two are even at M = 8: 25.5 / 27.7, 26.8 / 27.7, 85.9 / 87.9, 98.2 / 87.4.)
constexpr int64_t kPairsMinMVnni = 12;
// Up to this many 16-row tiles of activations (M <= 32) each participant of the pairs path
// transposes its own copy (sparse_int8_linear_isa); beyond, one shared copy (nt copies of a
// large M would cost memory, and each item's share of the tile's reads grows with M anyway).
constexpr int64_t kPairsOwnCopyTiles = 2;
// Activation tiles per pairs work item: each pair's two columns and weights are loaded once for
// all of them (per pair and tile 2 loads, 2 unpacks, 2 vpmaddwd, 2 vpaddd; the column indices and
// the weight broadcast, 3 loads, shared). Two where both transposed tiles fit kPairsItemBytes (so
// L1, Zen 3's 32 KiB included: K <= 512), else one. X as AVX2, csr 80%, M = 128, us, one tile /
// two / three: (1536, 384) one thread 500-512 / 436-452 / 416-425, two 262-271 / 233 / 231-232;
// (1152, 384) 370-374 / 330-335 / 319 and 197-203 / 177-180 / 176-179; (384, 1536), whose one
// tile is 48 KiB, the same with two (L2) and 1.2x slower with four.
constexpr int64_t kPairsItemBytes = 32 * 1024;
constexpr int64_t kPairsMaxTiles = 2;   // pairs_block_avx2 takes 1 or 2
// Below this much work (stored lanes x activation rows) one thread: a parallel region costs
// a few microseconds. Measured on the 2-core dev machine, csr 90 %, M = 1: (384, 1536) with
// 96 K lane-MACs 4.6 us on one thread, 5.6 us on two; (768, 3072) with 393 K, 12.7 us on one,
// 10.6 us on two.
constexpr int64_t kParallelMinWork = int64_t(1) << 18;
// The AVX2 pairs kernel takes about 3x as long per unit of its work as AVX-512 ELL per lane:
// its work counts this many times. Measured on X (Intel Xeon) masked to AVX2, csr 90 %, us,
// one thread / two: pairs M = 16 (384, 384), 236 K: 20.8 / 18.2-19.1.
constexpr int64_t kAvx2WorkWeight = 3;
// The AVX2 ELL kernel (also the AVX-VNNI path's) over sliding windows: about 4-5x AVX-512's
// time per lane (a tree of lookups where AVX-512 has one vpermb, on whole vectors: windows
// skip no zero half). X masked to AVX2, csr 90 %, M = 1, us, one thread / two: (384, 1152),
// 59 K lanes, 6.8 / 5.4; (384, 1536) and (768, 768), 78 K: 8.9 / 6.5, 7.9 / 6.3; (384, 384),
// 20 K: 3.2 / 3.5; M = 4 (384, 384), 78 K: 6.9 / 5.6.
constexpr int64_t kAvx2EllWorkWeight = 5;
// The tiled paths' work items go group of tiles by group (sparse_int8_linear_isa): a group's
// transposed activation tiles fill at most this many bytes (at least one tile), a third to a half
// of the L1 data cache of the cores we know (32 KB Zen 3 / 4, 48 KB Golden Cove).
constexpr int64_t kTileGroupBytes = 16 * 1024;

// AVX-512 ELL items are row blocks with every activation row; a weight of few blocks (N = 384:
// 24) at large M gave two threads few, long items to share. Such a weight's rows are split in
// as many groups (of at least kEllMinGroupRows, a multiple of 8) as take its items to
// kEllMinItems. Measured, X as AVX-512 VNNI, csr 80 %, M = 128, 2 threads, us, all rows /
// groups: (384, 384) 33.8-34.1 / 29.3-29.8, (1536, 384) 98.0-98.3 / 88.9-92.0; one thread
// unchanged. Splitting every weight's rows (in 24 KB of u) cost (768, 3072) 5 % (its vectors
// streamed once per group): benchmarks/RESULTS.md, "AVX-512 ELL: rows split for weights of few blocks".
constexpr int64_t kEllMinItems = 32;
constexpr int64_t kEllMinGroupRows = 32;
inline int64_t ell_group_rows(int64_t nblk, int64_t m) {
    if (nblk >= kEllMinItems || m < 2 * kEllMinGroupRows) return m;
    const int64_t groups = std::min((kEllMinItems + nblk - 1) / nblk, m / kEllMinGroupRows);
    return ((m + groups - 1) / groups + 7) / 8 * 8;
}

// Item i of a tiled path: the tiles run in groups of group_tiles, each group's items block-major
// (a row block's weights serve every tile of the group while in L1), one group after another
// (the group's tiles stay in L1 while all the row blocks' weights stream past). With one tile per
// group the order is tile-major, with all tiles in one group block-major.
struct TileItem {
    int64_t block, tile;
};
inline TileItem tile_item(int64_t i, int64_t blocks, int64_t tiles, int64_t group_tiles) {
    const int64_t g = i / (group_tiles * blocks);                     // every group before the last is full
    const int64_t in_group = std::min(group_tiles, tiles - g * group_tiles);
    const int64_t r = i - g * group_tiles * blocks;
    return {r / in_group, g * group_tiles + r % in_group};
}

}  // namespace

const char* sparse_path_name(SparsePath p) {
    switch (p) {
        case SparsePath::scalar: return "scalar";
        case SparsePath::ell: return "ell";
        case SparsePath::quad_tiles: return "quad_tiles";
        case SparsePath::ell_avx2: return "ell_avx2";
        case SparsePath::pairs_avx2: return "pairs_avx2";
        case SparsePath::quad_tiles_avx2: return "quad_tiles_avx2";
        default: return "auto";
    }
}

bool sparse_path_available(const SparseInt8Weight& w, SparsePath path, Int8Isa isa) {
    if (path == SparsePath::scalar) return true;
    // every vector path accumulates in wrapping int32 lanes: exact for K <= kMaxKInt32 only
    if (!int8_isa_supported(isa) || w.k > kMaxKInt32) return false;
    // each vector path runs on its own ISA only, so that the ISA override picks the code
    switch (path) {
        case SparsePath::ell:
            return int8_isa_is_avx512_class(isa) &&
                   (w.lanes == EllLanes::dword || (w.lanes == EllLanes::byte && sparse_has_vbmi()));
        case SparsePath::quad_tiles: return int8_isa_is_avx512_class(isa) && w.quad_rows > 0;
        case SparsePath::ell_avx2: return int8_isa_is_avx2_class(isa) && w.lanes != EllLanes::none;
        case SparsePath::pairs_avx2: return int8_isa_is_avx2_class(isa) && w.has_pairs;
        case SparsePath::quad_tiles_avx2: return int8_isa_is_avx2_class(isa) && w.quad_rows > 0 && w.quads_no_min;
        default: return false;
    }
}

SparsePath sparse_choose_path(const SparseInt8Weight& w, int64_t m, Int8Isa isa) {
    const bool tiles = sparse_path_available(w, SparsePath::quad_tiles, isa);
    if (tiles && m >= (w.quad_rows == 4 ? kQuadTilesMinM4 : kQuadTilesMinM1)) return SparsePath::quad_tiles;
    if (sparse_path_available(w, SparsePath::ell, isa)) return SparsePath::ell;
    if (tiles) return SparsePath::quad_tiles;
    if (sparse_path_available(w, SparsePath::quad_tiles_avx2, isa) && m >= kQuadTilesAvx2MinM)
        return SparsePath::quad_tiles_avx2;
    const bool pairs = sparse_path_available(w, SparsePath::pairs_avx2, isa);
    if (pairs && m >= (isa == Int8Isa::avx_vnni ? kPairsMinMVnni : kPairsMinM)) return SparsePath::pairs_avx2;
    if (sparse_path_available(w, SparsePath::ell_avx2, isa)) return SparsePath::ell_avx2;
    if (pairs) return SparsePath::pairs_avx2;
    return SparsePath::scalar;
}

void sparse_int8_linear_isa(const SparseInt8Weight& w, const float* x, int64_t m, const double* bias,
                            const Int8ActQuant& aq, float* y, SparsePath path, Int8Isa isa, int threads,
                            Activation act) {
    if (m <= 0) return;
    if (!int8_isa_supported(isa)) throw std::invalid_argument("sparse_int8_linear: unsupported ISA");
    if (path == SparsePath::automatic) {
        path = sparse_choose_path(w, m, isa);
    } else if (!sparse_path_available(w, path, isa)) {
        fail(std::string("sparse path '") + sparse_path_name(path) + "' is not available for this weight on '" +
             int8_isa_name(isa) + "' (a vector path needs its structures built at pack time, K <= " + str(kMaxKInt32) +
             " and its ISA: 'ell' and 'quad_tiles' run on avx512_vnni, 'ell_avx2', 'pairs_avx2' and 'quad_tiles_avx2' on "
             "avx2; 'quad_tiles_avx2' also needs a weight without -128)");
    }
    const int64_t n = w.n, k = w.k;
    // ELL tables read whole 128-byte segments and the tile transposes whole 16-quad blocks:
    // rows of u padded to a multiple of 128 bytes, with u = 128 (qx = 0) in the padding
    const int64_t ldu = round_up(k, kSparseSegment);
    const bool quads = path == SparsePath::quad_tiles || path == SparsePath::quad_tiles_avx2;
    const bool tiled = quads || path == SparsePath::pairs_avx2;
    const int64_t mpad = tiled ? round_up(m, kSparseTileRows) : m;
    AlignedArray<uint8_t> u;
    u.allocate(static_cast<size_t>(mpad * ldu));
    std::vector<double> sx(mpad, 0.0);
    std::vector<int64_t> row_corr(mpad, 0);   // unused: sparse weights have no zero point
    if (mpad > m) std::fill(u.get() + m * ldu, u.get() + mpad * ldu, uint8_t(128));

    const int64_t z = aq.is_static ? aq.zero_point : 0;
    AlignedArray<int32_t> corr_z;   // only for a static zero point z != 0
    const int32_t* corr = w.corr0.get();
    if (z != 0) {
        corr_z.allocate(w.npad);
        for (int64_t r = 0; r < w.npad; ++r)   // (128 + z) * rowsum modulo 2^32, as the int32 lanes
            corr_z[r] = static_cast<int32_t>(static_cast<uint32_t>((128 + z) * w.rowsum[r]));
        corr = corr_z.get();
    }
    AlignedArray<int32_t> corr_signed;   // z * rowsum: for the kernels that sum qx * w (AVX2 pairs, signed quads / ELL)
    // the AVX-VNNI path runs the AVX2 quad tiles and ELL with vpdpbusd (sparse_gemm_avxvnni.cpp):
    // sums of u * w for every weight (the tiles on rows transposed as for narrow weights)
    const bool vnni = isa == Int8Isa::avx_vnni;
    const bool quads_vnni = path == SparsePath::quad_tiles_avx2 && vnni;
    const bool quads_unsigned = quads_vnni || w.quads_narrow;
    // the AVX2 ELL kernel's step (sparse_ell_half.h): one vpdpbusd on avx_vnni, else signed pairs
    // where no ELL weight is -128 (their sums are of qx * w), else the split weights
    const sparse_detail::EllStep ell_step = vnni            ? sparse_detail::EllStep::vnni
                                            : w.ell_no_min ? sparse_detail::EllStep::signed_pairs
                                                           : sparse_detail::EllStep::split;
    const bool ell_signed = path == SparsePath::ell_avx2 && ell_step == sparse_detail::EllStep::signed_pairs;
    if (path == SparsePath::pairs_avx2 || (path == SparsePath::quad_tiles_avx2 && !quads_unsigned) || ell_signed) {
        corr_signed.allocate(w.npad);
        // the pairs' epilogue converts its int32 sums to float64 offset by 2^31 (sparse_gemm_avx2.cpp,
        // pairs_store): that offset is folded into their correction, z * rowsum - 2^31 (mod 2^32)
        const uint32_t offset = path == SparsePath::pairs_avx2 ? 0x80000000u : 0u;
        for (int64_t r = 0; r < w.npad; ++r)
            corr_signed[r] = static_cast<int32_t>((static_cast<uint32_t>(z * w.rowsum[r])) ^ offset);
    }
    static const int32_t kNoZeroPoint = 0;
    Problem p;
    p.w = &w;
    p.u = u.get();
    p.ldu = ldu;
    p.m = m;
    p.corr = corr;
    p.corr_signed = corr_signed.get();
    p.ep = Epilogue{corr, w.rowsum.get(), 128 + z, &kNoZeroPoint, false, w.scale.get(), bias,
                    row_corr.data(), sx.data()};
    p.y = y;

    int8_detail::QuantizeRowFn quantize = int8_detail::quantize_row_scalar;
#if QRT_INT8_X86_SIMD
    if (int8_isa_is_avx512_class(isa)) quantize = int8_detail::quantize_row_avx512;
    if (int8_isa_is_avx2_class(isa)) quantize = int8_detail::quantize_row_avx2;
#endif

    // work items, each computing a fixed set of outputs start to end (thread-count independent)
    int64_t items = 0, work = 0;
    const int64_t tiles = mpad / kSparseTileRows;
    // The tiled paths' items are (row block, activation tile) pairs in tile_item()'s order: by
    // groups of tiles that fit kTileGroupBytes. (Block-major over all the tiles, as before,
    // switched tiles every item and missed L1 once they outgrew it.)
    int64_t tile_blocks = 0;   // row blocks of a tiled path
    int64_t pairs_tiles = 1;   // pairs: activation tiles per item
    int64_t item_tiles = tiles;   // the tiled paths' unit of tile_item(): a tile, or pairs_tiles of them
    int64_t ell_rows = m;      // AVX-512 ELL: activation rows per item (ell_group_rows)
    switch (path) {
        case SparsePath::ell:
            ell_rows = ell_group_rows(w.nblk, m);
            items = w.nblk * ((m + ell_rows - 1) / ell_rows);
            work = w.ell_vectors * 64 * m;
            break;
        case SparsePath::ell_avx2: items = w.nblk; work = w.ell_vectors * 64 * m; break;
        case SparsePath::quad_tiles:
        case SparsePath::quad_tiles_avx2:
            tile_blocks = w.nblk;
            items = tile_blocks * tiles;
            work = w.nquads * w.quad_rows * 4 * mpad;
            break;
        case SparsePath::pairs_avx2:
            tile_blocks = (n + 7) / 8;   // 8 output rows a block
            pairs_tiles = std::clamp<int64_t>(kPairsItemBytes / (ldu * kSparseTileRows * 2), 1, std::min(kPairsMaxTiles, tiles));
            item_tiles = (tiles + pairs_tiles - 1) / pairs_tiles;
            items = tile_blocks * item_tiles;
            work = w.npairs * 2 * mpad;
            break;
        default: items = w.nblk; work = w.nnz * m; break;
    }
    // bytes of one transposed tile: pairs (ldu, 16) int16, quads (ldu / 4, 16, 4) bytes
    const int64_t tile_bytes = ldu * kSparseTileRows * (path == SparsePath::pairs_avx2 ? 2 * pairs_tiles : 1);
    const int64_t group_tiles = std::max<int64_t>(1, kTileGroupBytes / tile_bytes);
    int nt = std::max(1, threads);
    if (path == SparsePath::ell_avx2) work *= kAvx2EllWorkWeight;
    if (path == SparsePath::pairs_avx2) work *= kAvx2WorkWeight;
    if (work < kParallelMinWork) nt = 1;
    AlignedArray<uint8_t> xq;   // quad tiles: (tiles, ldu / 4, 16, 4)
    if (quads) xq.allocate(static_cast<size_t>(mpad * ldu));
    // pairs: (tiles, ldu, 16) int16. Its items read it at the columns their weights name, in no
    // order the prefetchers follow, so a worker reading the caller's copy missed to the other
    // core at almost every first touch. Up to kPairsOwnCopyTiles tiles every participant
    // transposes its own copy, from the rows of u, which it reads in order, when its first item
    // needs it. X as AVX2 (vCPUs ~300 ns apart), csr 90 %, 2 threads, us, shared copy / own
    // copies (with the SIMD transpose): (768, 768) M = 16 43.8-46.4 / 34.8-38.6, M = 8 37.4-37.7
    // / 28.3; (384, 384) M = 16 19.9-20.0 / 15.6-16.0.
    const bool xt_per_slot = path == SparsePath::pairs_avx2 && nt > 1 && tiles <= kPairsOwnCopyTiles;
    AlignedArray<int16_t> xt;
    std::vector<uint8_t> xt_ready;   // (participant, tile): its copy of the tile is written
    if (path == SparsePath::pairs_avx2) xt.allocate(static_cast<size_t>(mpad * ldu * (xt_per_slot ? nt : 1)));
    if (xt_per_slot) xt_ready.assign(static_cast<size_t>(nt * tiles), 0);

    const auto quantize_row = [&](int64_t i) { quantize(x + i * k, k, ldu, aq, u.get() + i * ldu, &sx[i], &row_corr[i]); };
    const auto transpose_tile = [&](int64_t t) {
#if QRT_INT8_X86_SIMD
        if (path == SparsePath::pairs_avx2)
            sparse_detail::pairs_transpose_avx2(p, t, xt.get());
        else if (path == SparsePath::quad_tiles_avx2)
            sparse_detail::quad_tile_transpose_avx2(u.get(), ldu, t, xq.get(), quads_unsigned);
        else
            sparse_detail::quad_tile_transpose_avx512(u.get(), ldu, t, xq.get());
#else
        (void)t;
#endif
    };
    // The activation: one pass over Y after the products, on the call's threads
    // (activation_inplace_threads: its bits, its split). Measured on MiniLM's 80% FFN input Linear, M = 128,
    // 2 threads, Zen 4, us: products 112, + the pass 196; the GELU in the ELL kernel's registers
    // before each store 223-241; on each work item's 16-column strips right after it 229.
    const auto run_item = [&](int64_t item, int slot) {
        // the tiled paths' (row block, activation tile) of this item
        const TileItem ti = tiled ? tile_item(item, tile_blocks, item_tiles, group_tiles) : TileItem{0, 0};
        switch (path) {
#if QRT_INT8_X86_SIMD
            case SparsePath::ell: {   // row group item / nblk of block item % nblk
                const int64_t b = item % w.nblk, m_lo = item / w.nblk * ell_rows;
                sparse_detail::ell_blocks_avx512(p, b, b + 1, m_lo, std::min(m, m_lo + ell_rows));
                break;
            }
            case SparsePath::quad_tiles:
                sparse_detail::quad_tile_avx512(p, xq.get(), ti.block, ti.tile);
                break;
            case SparsePath::ell_avx2: sparse_detail::ell_blocks_avx2(p, item, item + 1, ell_step); break;
            case SparsePath::pairs_avx2: {
                const int64_t t = ti.tile * pairs_tiles;
                const int nts = static_cast<int>(std::min(pairs_tiles, tiles - t));
                int16_t* copy = xt.get();
                if (xt_per_slot) {
                    copy += static_cast<int64_t>(slot) * mpad * ldu;
                    for (int64_t q = t; q < t + nts; ++q) {
                        uint8_t& ready = xt_ready[static_cast<size_t>(slot * tiles + q)];
                        if (!ready) {
                            sparse_detail::pairs_transpose_avx2(p, q, copy);
                            ready = 1;
                        }
                    }
                }
                sparse_detail::pairs_block_avx2(p, copy, ti.block, t, nts);
                break;
            }
            case SparsePath::quad_tiles_avx2:
                sparse_detail::quad_tile_avx2(p, xq.get(), ti.block, ti.tile, quads_vnni);
                break;
#endif
            default:
                if (w.has_rows)
                    scalar_rows(p, item * kSparseBlockRows, std::min(n, (item + 1) * kSparseBlockRows));
                else
                    scalar_ell_block(p, item);
                break;
        }
    };
    const int64_t ntiles = tiled && !xt_per_slot ? tiles : 0;
    if (nt == 1) {   // no OpenMP loop bookkeeping (measured: ~10 % of a small call)
        for (int64_t i = 0; i < m; ++i) quantize_row(i);
        for (int64_t t = 0; t < ntiles; ++t) transpose_tile(t);
        for (int64_t item = 0; item < items; ++item) run_item(item, 0);
        activation_inplace_threads(y, m * n, act, isa, 1);
        return;
    }
    // Rounds of work_pool.h items (claimed by whoever is awake, the caller included; nobody
    // waited for who has not started): every row quantized (and, for quad tiles / pairs,
    // transposed), then each work item computed start to end by one thread, items claimed in
    // small chunks.
    const int64_t chunk = std::max<int64_t>(1, items / (8 * nt));
    const int64_t quant_rows = int8_detail::quant_rows_per_item(m, nt);   // int8_gemm_kernels.h
    parallel_items((m + quant_rows - 1) / quant_rows, nt, [&](int64_t c) {
        for (int64_t i = c * quant_rows; i < std::min(m, (c + 1) * quant_rows); ++i) quantize_row(i);
    });
    parallel_items(ntiles, nt, transpose_tile);
    parallel_items((items + chunk - 1) / chunk, nt, [&](int64_t c, int slot) {
        for (int64_t item = c * chunk; item < std::min(items, (c + 1) * chunk); ++item) run_item(item, slot);
    });
    activation_inplace_threads(y, m * n, act, isa, nt);
}

void sparse_int8_linear(const SparseInt8Weight& w, const float* x, int64_t m, const double* bias,
                        const Int8ActQuant& aq, float* y, SparsePath path, Activation act) {
    sparse_int8_linear_isa(w, x, m, bias, aq, y, path, int8_current_isa(), int8_get_threads(), act);
}

}  // namespace qrt
