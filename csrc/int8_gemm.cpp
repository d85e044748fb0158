// int8 Linear: weight packing, the scalar path, run-time dispatch and the threaded driver.
// Numerics and layouts: int8_gemm.h. The AVX2 and AVX-512 VNNI paths are in
// int8_gemm_avx2.cpp and int8_gemm_avx512.cpp.
#include "int8_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>
#include <stdexcept>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>

#endif

#include "cpu_features.h"
#include "int8_gemm_kernels.h"
#include "work_pool.h"

namespace qrt {

using namespace int8_detail;

// --- aligned arrays ----------------------------------------------------------------------------

template <typename T>
void AlignedArray<T>::Free::operator()(T* p) const {
    ::operator delete[](static_cast<void*>(p), std::align_val_t(64));
}

template <typename T>
void AlignedArray<T>::allocate(size_t n) {
    // at least one element, so get() is never null and a 0-row call needs no special case
    data.reset(static_cast<T*>(::operator new[](std::max<size_t>(n, 1) * sizeof(T), std::align_val_t(64))));
    size = n;
}

template struct AlignedArray<int8_t>;
template struct AlignedArray<uint8_t>;
template struct AlignedArray<int32_t>;
template struct AlignedArray<uint32_t>;
template struct AlignedArray<int64_t>;
template struct AlignedArray<int16_t>;
template struct AlignedArray<double>;
template struct AlignedArray<float>;

// --- packing -----------------------------------------------------------------------------------


namespace {

// (128 + z) * colsum modulo 2^32, like the int32 lanes it is subtracted from (int8_gemm.h)
int32_t column_correction(int64_t colsum, int64_t z) {
    return static_cast<int32_t>(static_cast<uint32_t>((128 + z) * colsum));
}

}  // namespace

size_t Int8PackedWeight::nbytes() const {
    return data.size + colsum.size * sizeof(int64_t) + col_corr0.size * sizeof(int32_t) +
           zero_point.size * sizeof(int32_t) + scale.size * sizeof(double);
}

Int8PackedWeight int8_pack_weight(const int8_t* qdata, int64_t n, int64_t k, const float* scale,
                                  const int8_t* zero_point) {
    if (n < 1 || k < 1) throw std::invalid_argument("int8 weight must have N >= 1 and K >= 1");
    if (k > kMaxExactK) throw std::invalid_argument("int8 weight: K is too large for an exact integer accumulation");
    Int8PackedWeight w;
    w.n = n;
    w.k = k;
    w.k4 = (k + 3) / 4;
    w.k4_stored = (w.k4 + kAmxK4 - 1) / kAmxK4 * kAmxK4;
    w.panels = (n + kInt8Panel - 1) / kInt8Panel;
    w.has_zero_point = zero_point != nullptr;
    const int64_t ncols = w.panels * kInt8Panel;
    const int64_t panel_bytes = w.panel_bytes();
    w.data.allocate(static_cast<size_t>(w.panels * panel_bytes));
    std::fill(w.data.get(), w.data.get() + w.data.size, int8_t(0));
    w.colsum.allocate(ncols);
    w.col_corr0.allocate(ncols);
    w.zero_point.allocate(ncols);
    w.scale.allocate(ncols);
    for (int64_t c = 0; c < ncols; ++c) {
        w.colsum[c] = 0;
        w.zero_point[c] = 0;
        w.scale[c] = 0.0;
    }
    for (int64_t row = 0; row < n; ++row) {
        const int8_t* q = qdata + row * k;
        // column c of panel p: byte (kk * 64 + c) * 4 + j of the panel holds k = 4 kk + j
        int8_t* dst = w.data.get() + (row / kInt8Panel) * panel_bytes + (row % kInt8Panel) * 4;
        int64_t sum = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
            dst[(kk / 4) * kInt8Panel * 4 + (kk % 4)] = q[kk];
            sum += q[kk];
            w.has_q_min |= q[kk] == -128;
            w.max_abs_q = std::max<int32_t>(w.max_abs_q, q[kk] < 0 ? -q[kk] : q[kk]);
        }
        w.colsum[row] = sum;
        w.zero_point[row] = zero_point ? zero_point[row] : 0;
        w.scale[row] = static_cast<double>(scale[row]);
    }
    for (int64_t c = 0; c < ncols; ++c) w.col_corr0[c] = column_correction(w.colsum[c], 0);
    return w;
}

// --- the scalar path ---------------------------------------------------------------------------

namespace int8_detail {

void quantize_row_scalar(const float* x, int64_t k, int64_t kp, const Int8ActQuant& aq,
                         uint8_t* u, double* sx, int64_t* row_corr) {
    double s = aq.scale;
    if (!aq.is_static) {
        uint32_t top = 0;
        for (int64_t j = 0; j < k; ++j) top = std::max(top, abs_bits(x[j]));
        s = dynamic_row_scale(float_of_abs_bits(top));
    }
    const double z = aq.is_static ? aq.zero_point : 0;
    const double lo = quant_lo(aq);
    int64_t sum = 0;
    bool nan = false;
    for (int64_t j = 0; j < k; ++j) {
        nan |= std::isnan(x[j]);
        const int32_t q = quantize_value(x[j], s, z, lo);
        sum += q;
        u[j] = static_cast<uint8_t>(q + 128);
    }
    for (int64_t j = k; j < kp; ++j) u[j] = 128;   // qx = 0: meets a 0 weight byte anyway
    *row_corr = sum - k * static_cast<int64_t>(z);
    // static: a NaN in x makes the reference's row NaN (rint(NaN) survives its clip), while
    // +-inf clips to a finite qx there and here; dynamic: the scale is already NaN
    *sx = (aq.is_static && nan) ? std::numeric_limits<double>::quiet_NaN() : s;
}

// Exact in int64 for every K (no kMaxKInt32 limit): the path for large K.
void tile_scalar(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                 const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    int64_t acc[kInt8MR][kInt8Panel] = {};
    for (int64_t kk = 0; kk < k4; ++kk) {
        const int8_t* wk = panel + kk * kInt8Panel * 4;
        for (int64_t r = 0; r < rows; ++r) {
            const uint8_t* a = u + r * ldu + 4 * kk;
            const int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
            for (int64_t c = 0; c < kInt8Panel; ++c) {
                const int8_t* b = wk + 4 * c;
                acc[r][c] += a0 * b[0] + a1 * b[1] + a2 * b[2] + a3 * b[3];   // |.| < 2^17
            }
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t m = m0 + r;
        for (int64_t c = 0; c < kInt8Panel; ++c) {
            const int64_t n = n0 + c;
            const int64_t exact = acc[r][c] - ep.col_shift * ep.colsum[n] -
                                  static_cast<int64_t>(ep.zw[n]) * ep.row_corr[m];
            y[r * ldy + c] = epilogue_value(exact, n, m, ep);
        }
    }
}

}  // namespace int8_detail

// --- dispatch ----------------------------------------------------------------------------------

namespace {

struct PathKernels {
    QuantizeRowFn quantize_row;
    TileFn tile;
    int64_t row_factor = 1;   // bytes of a quantized row = row_factor * kp
    int64_t mr = kInt8MR;     // rows per tile
    bool whole_block = false; // tile takes a work item's whole row block at once (int8_gemm_kernels.h)
    bool whole_chunks = false;// tile reads rows of 4 * k4_stored bytes (whole 64-byte k chunks), not 4 * k4
};

// AVX2 takes the vpmaddubsw tile (2 multiplies per 32 products) unless a weight byte is -128,
// where only the int16-widening tile is exact (int8_gemm_avx2.cpp); a narrow weight (every
// |qw| <= kNarrowQMax) takes the narrow tile (no vpsignb, rows half as long).
PathKernels kernels_for(Int8Isa isa, const Int8PackedWeight& w) {
    switch (isa) {
#if QRT_INT8_X86_SIMD
        case Int8Isa::avx512_vnni: return {quantize_row_avx512, tile_avx512, 1, kAvx512MR};
#if QRT_INT8_AMX
        case Int8Isa::amx: return {quantize_row_avx512, tile_amx, 1, kAmxMR, true, true};
#endif
#if QRT_INT8_AVX_VNNI
        case Int8Isa::avx_vnni: return {quantize_row_avx2, tile_avx_vnni, 1, kAvxVnniMR};
#endif
        case Int8Isa::avx2:
            if (w.has_q_min) return {quantize_row_avx2, tile_avx2};
            if (w.max_abs_q <= kNarrowQMax) return {quantize_row_avx2, tile_avx2_narrow};
            return {quantize_row_avx2_signed, tile_avx2_signed, 2};
#endif
        default: return {quantize_row_scalar, tile_scalar};
    }
}

}  // namespace

QuantizeRowFn int8_detail::unsigned_row_quantizer(Int8Isa isa) {
    switch (isa) {
#if QRT_INT8_X86_SIMD
        case Int8Isa::amx:
        case Int8Isa::avx512_vnni: return quantize_row_avx512;
        case Int8Isa::avx_vnni:
        case Int8Isa::avx2: return quantize_row_avx2;
#endif
        default: return quantize_row_scalar;
    }
}

namespace {

// sum of n bytes: 16 at a time with SSE2's psadbw (every x86-64 has it), the rest one by one
int64_t byte_sum(const uint8_t* b, int64_t n) {
    int64_t sum = 0, j = 0;
#if QRT_INT8_X86_SIMD
    __m128i acc = _mm_setzero_si128();
    for (; j + 16 <= n; j += 16)
        acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j)),
                                               _mm_setzero_si128()));
    sum = _mm_cvtsi128_si64(acc) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
    for (; j < n; ++j) sum += b[j];
    return sum;
}

}  // namespace

void int8_detail::RowSink::put_quantized(int64_t i, const uint8_t* ubytes, bool nan) const {
    uint8_t* row = u + i * ldu;
    int64_t sum = 0;
    if (signed_rows) {      // qx, then |qx| (|-128| = 128 as a byte), 0 past K
        for (int64_t j = 0; j < k; ++j) {
            const int32_t q = static_cast<int32_t>(ubytes[j]) - 128;
            sum += q;
            row[j] = static_cast<uint8_t>(static_cast<int8_t>(q));
            row[kp + j] = static_cast<uint8_t>(q < 0 ? -q : q);
        }
        std::fill(row + k, row + kp, uint8_t(0));
        std::fill(row + kp + k, row + 2 * kp, uint8_t(0));
    } else {                // u = qx + 128, 128 past K
        std::copy(ubytes, ubytes + k, row);
        std::fill(row + k, row + kp, uint8_t(128));
        sum = byte_sum(ubytes, k) - 128 * k;
    }
    row_corr[i] = sum - k * static_cast<int64_t>(aq.zero_point);
    sx[i] = nan ? std::numeric_limits<double>::quiet_NaN() : aq.scale;
}

namespace {

int default_threads() {
#if defined(_OPENMP)
    return std::max(1, omp_get_max_threads());
#else
    return 1;
#endif
}

std::atomic<int> g_threads{0};          // 0: not set yet (default_threads())
std::atomic<int> g_isa_override{-1};    // -1: the best path

}  // namespace

const char* int8_isa_name(Int8Isa isa) {
    switch (isa) {
        case Int8Isa::amx: return "amx";
        case Int8Isa::avx512_vnni: return "avx512_vnni";
        case Int8Isa::avx_vnni: return "avx_vnni";
        case Int8Isa::avx2: return "avx2";
        default: return "scalar";
    }
}

bool int8_isa_supported(Int8Isa isa) {
    if (isa == Int8Isa::scalar) return true;
#if QRT_INT8_X86_SIMD
    // detected once: the CPU does not change under a running process
    static const CpuFeatures f = detect_cpu_features();
    // the AVX2 path's epilogue activations use FMA (activation.h); every AVX2 CPU has it
    if (isa == Int8Isa::avx2) return f.avx2 && f.fma;
    // DQ: the quantizer's vreduceps (every CPU with AVX-512 VNNI has it; asked for all the same)
    if (isa == Int8Isa::avx512_vnni) return f.avx512f && f.avx512bw && f.avx512dq && f.avx512_vnni;
    if (isa == Int8Isa::avx_vnni) return QRT_INT8_AVX_VNNI && f.avx2 && f.fma && f.avx_vnni;
    // the OS's permission last: asked for only on a CPU that has the tiles
    if (isa == Int8Isa::amx)
        return QRT_INT8_AMX && f.avx512f && f.avx512bw && f.avx512dq && f.avx512_vnni && f.amx_int8 && amx_permitted();
#endif
    return false;
}

Int8Isa int8_best_isa() {
    if (int8_isa_supported(Int8Isa::amx)) return Int8Isa::amx;
    if (int8_isa_supported(Int8Isa::avx512_vnni)) return Int8Isa::avx512_vnni;
    if (int8_isa_supported(Int8Isa::avx_vnni)) return Int8Isa::avx_vnni;
    if (int8_isa_supported(Int8Isa::avx2)) return Int8Isa::avx2;
    return Int8Isa::scalar;
}

Int8Isa int8_current_isa() {
    const int forced = g_isa_override.load();
    return forced < 0 ? int8_best_isa() : static_cast<Int8Isa>(forced);
}

bool int8_isa_forced() { return g_isa_override.load() >= 0; }

void int8_set_isa(const std::string& name) {
    if (name == "auto") {
        g_isa_override.store(-1);
        return;
    }
    for (Int8Isa isa : {Int8Isa::scalar, Int8Isa::avx2, Int8Isa::avx_vnni, Int8Isa::avx512_vnni, Int8Isa::amx}) {
        if (name == int8_isa_name(isa)) {
            if (!int8_isa_supported(isa))
                throw std::invalid_argument("int8 path '" + name + "' is not supported by this CPU (best here: " +
                                            int8_isa_name(int8_best_isa()) + ")");
            g_isa_override.store(static_cast<int>(isa));
            return;
        }
    }
    throw std::invalid_argument("unknown int8 path '" + name + "'; expected one of auto, amx, avx512_vnni, avx_vnni, avx2, scalar");
}

void int8_set_threads(int n) { g_threads.store(std::max(1, n)); }

int int8_get_threads() {
    const int n = g_threads.load();
    return n > 0 ? n : default_threads();
}

bool int8_has_openmp() {
#if defined(_OPENMP)
    return true;
#else
    return false;
#endif
}

// --- the driver --------------------------------------------------------------------------------

namespace {

// Below this many multiply-adds one thread is as fast as two: handing work to the pool costs a
// few microseconds even with the workers spinning. Measured on Zen 4 (2 vCPU, AVX-512 VNNI,
// RESULTS.md "The work pool hands each thread the same items on quiet cores"), one thread
// against two, median us: M = 1,
// (K, N) = (384, 384) (0.15 M) 2.43 / 2.47; (384, 1152) (0.44 M) 5.31 / 3.95; (768, 2304)
// (1.8 M) 22.2 / 12.1; M = 4, (384, 384) (0.59 M) 4.39 / 4.20. A GEMV streams its weight, and
// two cores stream it at twice the rate of one, each from its own L2 when the work pool keeps
// the same panels on the same core (work_pool.h). The limit was 2 M before that pool split its
// items by participant (each call gave the threads a different mix of panels).
constexpr int64_t kParallelMinMacs = int64_t(1) << 18;
// Rows of u one block of work reads for every panel: a block of MC rows x K bytes stays in the
// core's L2 (1 MiB on Zen 4, 2 MiB on recent Intel) next to the weight panel (K x 64 bytes)
// being multiplied, while each panel is streamed once per block.
constexpr int64_t kRowBlockBytes = 256 * 1024;
// A weight larger than this is not expected to stay in the last-level cache (a 2-vCPU slice of
// a shared L3) from one row block to the next: every row block then streams it from memory
// again, so its row blocks are made large (the quantized rows come from L3 instead of L2).
// Measured on Zen 3 (RESULTS.md, 2026-12-04): (M, K, N) = (128, 11008, 4096) 88-91 ms with
// 256 KB blocks (16 blocks: the 45 MB weight read 16 times), 45-51 ms with 16 MB (one block);
// (16, 4096, 4096) 2.7-3.0 -> 2.2-2.3 ms; weights of 2.4 MB (BERT-base) no different.
constexpr int64_t kStreamedWeightBytes = int64_t(4) << 20;
constexpr int64_t kStreamedRowBlockBytes = int64_t(16) << 20;
// work items per thread to aim for, so that uneven items still split evenly
constexpr int64_t kItemsPerThread = 4;

}  // namespace

void int8_detail::int8_gemm_rows(const Int8PackedWeight& w, int64_t m, const RowFill& fill, const double* bias,
                                  const Int8ActQuant& aq, float* y, Int8Isa isa, int threads, Activation act) {
    if (m <= 0) return;
    if (!int8_isa_supported(isa)) throw std::invalid_argument("int8_linear: unsupported path");
    if (w.k > kMaxKInt32) isa = Int8Isa::scalar;   // int32 lanes would not be exact
    const PathKernels kern = kernels_for(isa, w);
    const int64_t mr = kern.mr;
    if (!kern.whole_block && mr > kMaxStackTileRows) throw std::logic_error("int8_linear: tile taller than its scratch");
    // the AMX tile reads whole 64-byte k chunks of each row (128 past K meets the panel's
    // zero-filled steps), the others k4 steps
    const int64_t kp = 4 * (kern.whole_chunks ? w.k4_stored : w.k4);
    const int64_t n = w.n, k = w.k, ncols = w.panels * kInt8Panel;
    const int64_t panel_bytes = w.panel_bytes();

    // per-call buffers: u (M, kp) uint8 (rows padded to a whole tile: the AMX tile reads
    // kAmxRows rows whatever its height), the per-row scales and corrections, and the
    // per-column corrections for this call's activation zero point (O(M K + N) work)
    const int64_t ldu = kern.row_factor * kp;
    const int64_t tiles = (m + mr - 1) / mr;
    AlignedArray<uint8_t> u;
    u.allocate(static_cast<size_t>(tiles * mr * ldu));
    std::fill(u.get() + m * ldu, u.get() + tiles * mr * ldu, uint8_t(128));
    std::vector<double> sx(m);
    std::vector<int64_t> row_corr(m);
    const int64_t z = aq.is_static ? aq.zero_point : 0;
    AlignedArray<int32_t> col_corr_z;   // only for a static zero point z != 0
    const int32_t* col_corr = w.col_corr0.get();
    if (z != 0) {
        col_corr_z.allocate(ncols);
        for (int64_t c = 0; c < ncols; ++c) col_corr_z[c] = column_correction(w.colsum[c], z);
        col_corr = col_corr_z.get();
    }
    const Epilogue ep{col_corr, w.colsum.get(), 128 + z, w.zero_point.get(), w.has_zero_point,
                      w.scale.get(), bias, row_corr.data(), sx.data(), act, w.col_corr0.get()};

    int nt = std::max(1, threads);
    if (m * ncols * kp < kParallelMinMacs) nt = 1;
    // work items: (block of rows, panel), rows blocked for L2 and split further until there
    // are enough items for the threads
    const int64_t weight_bytes = w.k4 * 4 * ncols;
    const int64_t row_block_bytes = weight_bytes > kStreamedWeightBytes ? kStreamedRowBlockBytes : kRowBlockBytes;
    int64_t block_tiles = std::max<int64_t>(1, row_block_bytes / (ldu * mr));
    int64_t row_blocks = (tiles + block_tiles - 1) / block_tiles;
    const int64_t want_blocks = (kItemsPerThread * nt + w.panels - 1) / w.panels;
    if (row_blocks < want_blocks) {
        row_blocks = std::min(tiles, want_blocks);
        block_tiles = (tiles + row_blocks - 1) / row_blocks;
        row_blocks = (tiles + block_tiles - 1) / block_tiles;
    }
    const int64_t items = row_blocks * w.panels;

    // Two rounds of work_pool.h items (claimed by whoever is awake, the caller included; no
    // waiting for a worker that has not started): every row quantized (quant_rows_per_item rows
    // an item), then each output tile computed start to end by one thread, in a fixed order, so
    // the result does not depend on the thread count or on which thread took which item.
    // Items in order: the threads work on one row block at a time, each panel of it read by
    // one of them.
    const int64_t quant_rows = int8_detail::quant_rows_per_item(m, nt);
    const RowSink sink{kern.quantize_row, aq, k, kp, ldu, u.get(), sx.data(), row_corr.data(), kern.row_factor == 2};
    parallel_items((m + quant_rows - 1) / quant_rows, nt, [&](int64_t item) {
        fill(item * quant_rows, std::min(m, (item + 1) * quant_rows), sink);
    });
    parallel_items(items, nt, [&](int64_t item) {
        const int64_t blk = item / w.panels, p = item % w.panels;
        const int64_t t_end = std::min(tiles, (blk + 1) * block_tiles);
        const int64_t n0 = p * kInt8Panel;
        const int64_t width = std::min(kInt8Panel, n - n0);
        const int8_t* panel = w.data.get() + p * panel_bytes;
        if (kern.whole_block) {
            const int64_t r0 = blk * block_tiles * mr, rows = std::min(m, t_end * mr) - r0;
            const uint8_t* ub = u.get() + r0 * ldu;
            if (width == kInt8Panel) {
                kern.tile(rows, ub, ldu, panel, w.k4, ep, r0, n0, y + r0 * n + n0, n);
            } else {   // the last panel: into scratch, as below
                std::vector<float> scratch(static_cast<size_t>(rows * kInt8Panel));
                kern.tile(rows, ub, ldu, panel, w.k4, ep, r0, n0, scratch.data(), kInt8Panel);
                for (int64_t r = 0; r < rows; ++r)
                    std::copy(&scratch[r * kInt8Panel], &scratch[r * kInt8Panel] + width, y + (r0 + r) * n + n0);
            }
            return;
        }
        alignas(64) float scratch[kMaxStackTileRows * kInt8Panel];
        for (int64_t t = blk * block_tiles; t < t_end; ++t) {
            const int64_t m0 = t * mr;
            const int64_t rows = std::min(mr, m - m0);
            const uint8_t* ut = u.get() + m0 * ldu;
            if (width == kInt8Panel) {
                kern.tile(rows, ut, ldu, panel, w.k4, ep, m0, n0, y + m0 * n + n0, n);
            } else {
                // the last panel of an N that is not a multiple of 64: a full-width tile
                // into scratch (padded columns have weight 0 and scale 0), valid columns copied
                kern.tile(rows, ut, ldu, panel, w.k4, ep, m0, n0, scratch, kInt8Panel);
                for (int64_t r = 0; r < rows; ++r)
                    std::copy(scratch + r * kInt8Panel, scratch + r * kInt8Panel + width, y + (m0 + r) * n + n0);
            }
        }
    });
}

void int8_linear_isa(const Int8PackedWeight& w, const float* x, int64_t m, const double* bias,
                     const Int8ActQuant& aq, float* y, Int8Isa isa, int threads, Activation act) {
    const int64_t k = w.k;
    int8_gemm_rows(w, m, [x, k](int64_t i0, int64_t i1, const RowSink& sink) {
        for (int64_t i = i0; i < i1; ++i) sink.put(i, x + i * k);
    }, bias, aq, y, isa, threads, act);
}

void int8_linear(const Int8PackedWeight& w, const float* x, int64_t m, const double* bias,
                 const Int8ActQuant& aq, float* y, Activation act) {
    int8_linear_isa(w, x, m, bias, aq, y, int8_current_isa(), int8_get_threads(), act);
}

// --- the epilogue activation on its own ----------------------------------------------------------

void activation_inplace_isa(float* y, int64_t count, Activation act, Int8Isa isa) {
    if (act == Activation::none || count <= 0) return;
    if (!int8_isa_supported(isa)) throw std::invalid_argument("activation_inplace: unsupported path");
    switch (isa) {
#if QRT_INT8_X86_SIMD
        case Int8Isa::amx:
        case Int8Isa::avx512_vnni: activation_span_avx512(y, count, act); return;
        case Int8Isa::avx_vnni:
        case Int8Isa::avx2: activation_span_avx2(y, count, act); return;
#endif
        default:
            for (int64_t i = 0; i < count; ++i) y[i] = activation_scalar(y[i], act);
    }
}

namespace {

// The activation on its own is split over the threads (work_pool.h items of kActivationChunk
// elements) from this many elements: a GELU costs about 1.5 ns an element on one Zen 3 core, so
// the 128 x 1536 outputs of a sparse FFN Linear (196 K, which the sparse kernels do not fuse)
// took 0.3 ms on one thread; ReLU, a compare per element, stays on one thread until it is
// memory-bound work worth a second core. Each element is computed alone: the same bits however
// it is split (activation.h).
constexpr int64_t kActivationChunk = 16384;
constexpr int64_t kGeluParallelMin = 32768;
constexpr int64_t kReluParallelMin = 1 << 20;

}  // namespace

void activation_inplace(float* y, int64_t count, Activation act) {
    activation_inplace_threads(y, count, act, int8_current_isa(), int8_get_threads());
}

void activation_inplace_threads(float* y, int64_t count, Activation act, Int8Isa isa, int nt) {
    const int64_t min_count = act == Activation::relu ? kReluParallelMin : kGeluParallelMin;
    if (act == Activation::none || nt <= 1 || count < min_count) {
        activation_inplace_isa(y, count, act, isa);
        return;
    }
    parallel_items((count + kActivationChunk - 1) / kActivationChunk, nt, [&](int64_t item) {
        const int64_t lo = item * kActivationChunk;
        activation_inplace_isa(y + lo, std::min(kActivationChunk, count - lo), act, isa);
    });
}

}  // namespace qrt
