// int4_grouped weight-only Linear: dispatch, threads, scalar path. Numerics: int4_gemm.h.
// The SIMD tiles are in int4_gemm_avx512.cpp and int4_gemm_avx2.cpp.
#include "int4_gemm.h"

#include <algorithm>
#include <stdexcept>
#include <tuple>

#include "cpu_features.h"
#include "int8_gemm.h"
#include "work_pool.h"

namespace qrt {

Int4Weight int4_make_weight(const uint8_t* qdata, const float* scale, const uint8_t* zero_point,
                            int64_t n, int64_t k, int64_t group_size) {
    if (n < 1 || k < 1) throw std::invalid_argument("int4 weight: N and K must be >= 1");
    if (group_size < 2 || group_size % 2) throw std::invalid_argument("int4 weight: group_size must be even and >= 2");
    Int4Weight w;
    w.n = n;
    w.k = k;
    w.group_size = group_size;
    w.groups = (k + group_size - 1) / group_size;
    w.symmetric = zero_point == nullptr;
    const int64_t bytes = n * w.kp() / 2, ng = n * w.groups;
    w.qdata.assign(qdata, qdata + bytes);
    w.scale.assign(scale, scale + ng);
    w.zero_point.assign(static_cast<size_t>(ng), 0);
    if (zero_point)
        for (int64_t i = 0; i < ng; ++i) {
            if (zero_point[i] > 15) throw std::invalid_argument("int4 weight: zero_point values must be in [0, 15]");
            w.zero_point[i] = zero_point[i];
        }
    return w;
}

const char* int4_isa_name(Int4Isa isa) {
    switch (isa) {
        case Int4Isa::avx512: return "avx512";
        case Int4Isa::avx2: return "avx2";
        default: return "scalar";
    }
}

bool int4_isa_supported(Int4Isa isa) {
    if (isa == Int4Isa::scalar) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    // detected once: the CPU does not change under a running process
    static const CpuFeatures f = detect_cpu_features();
    if (isa == Int4Isa::avx2) return f.avx2 && f.fma;
    return f.avx512f && f.avx512bw;
#else
    return false;
#endif
}

Int4Isa int4_auto_isa(const Int4Weight& w) {
    // a forced int8 path caps the choice (int4_gemm.h); read once, so one answer per call
    const bool forced = int8_isa_forced();
    const Int8Isa cap = forced ? int8_current_isa() : Int8Isa::avx512_vnni;
    if (w.group_size % kInt4Avx512Step == 0 && int8_isa_is_avx512_class(cap) && int4_isa_supported(Int4Isa::avx512))
        return Int4Isa::avx512;
    if (w.group_size % kInt4Avx2Step == 0 && cap != Int8Isa::scalar && int4_isa_supported(Int4Isa::avx2))
        return Int4Isa::avx2;
    return Int4Isa::scalar;
}

Int4Isa int4_isa_from_name(const std::string& name, const Int4Weight& w) {
    if (name == "auto") return int4_auto_isa(w);
    if (name == "scalar") return Int4Isa::scalar;
    for (const auto& [isa, step, needs] : {std::tuple{Int4Isa::avx512, kInt4Avx512Step, "AVX-512F/BW"},
                                           std::tuple{Int4Isa::avx2, kInt4Avx2Step, "AVX2/FMA"}}) {
        if (name != int4_isa_name(isa)) continue;
        if (!int4_isa_supported(isa)) throw std::invalid_argument("isa '" + name + "': this CPU has no " + needs);
        if (w.group_size % step)
            throw std::invalid_argument("isa '" + name + "' needs group_size % " + std::to_string(step) +
                                        " == 0, got " + std::to_string(w.group_size));
        return isa;
    }
    throw std::invalid_argument("isa = '" + name + "', expected 'auto', 'avx512', 'avx2' or 'scalar'");
}

namespace {

// outputs per work item on the scalar path (each a K-long dot product)
constexpr int64_t kScalarOutputs = 16;
// work items per thread to aim for on the SIMD path, so that uneven items still split evenly
constexpr int64_t kItemsPerThread = 4;

// One output on the scalar path: sequential float32 multiply-adds in k order.
float dot_scalar(const Int4Weight& w, const float* x, int64_t n) {
    const uint8_t* q = w.qdata.data() + n * (w.kp() / 2);
    const float* s = w.scale.data() + n * w.groups;
    const int32_t* zp = w.zero_point.data() + n * w.groups;
    float acc = 0.0f;
    for (int64_t k = 0; k < w.k; ++k) {
        const int64_t j = k / w.group_size;
        int32_t v = (k & 1) ? (q[k >> 1] >> 4) : (q[k >> 1] & 0xF);
        if (w.symmetric) v = v >= 8 ? v - 16 : v;
        const float wf = static_cast<float>(v - zp[j]) * s[j];   // the dequantized weight's bits
        acc += x[k] * wf;    // -ffp-contract=off: a product, then a sum (two roundings)
    }
    return acc;
}

inline float finish(float acc, const double* bias, int64_t n) {
    return bias ? static_cast<float>(static_cast<double>(acc) + bias[n]) : acc;
}

}  // namespace

void int4_linear(const Int4Weight& w, const float* x, int64_t m, const double* bias, float* y,
                 Int4Isa isa, int threads) {
    if (m <= 0) return;
    const int nt = std::max(1, threads);
    if (isa == Int4Isa::scalar) {
        // work items of kScalarOutputs outputs (row-major), on the pool above 64 K multiply-adds
        const int64_t outputs = m * w.n;
        const int64_t items = (outputs + kScalarOutputs - 1) / kScalarOutputs;
        parallel_items(items, outputs * w.k > (1 << 16) ? nt : 1, [&](int64_t item) {
            for (int64_t i = item * kScalarOutputs; i < std::min(outputs, (item + 1) * kScalarOutputs); ++i) {
                const int64_t r = i / w.n, n = i % w.n;
                y[r * w.n + n] = finish(dot_scalar(w, x + r * w.k, n), bias, n);
            }
        });
        return;
    }
    // SIMD: X re-ordered per step of k (32 on AVX-512, 16 on AVX2; evens, then odds) so that
    // the unpacked low / high nibbles of a step's bytes line up with it without shuffles; zero
    // padded to Kp.
    const int64_t kp = w.kp();
    const int64_t step = isa == Int4Isa::avx512 ? kInt4Avx512Step : kInt4Avx2Step, half = step / 2;
    std::vector<float> xs(static_cast<size_t>(m * kp), 0.0f);
    for (int64_t r = 0; r < m; ++r) {
        const float* xr = x + r * w.k;
        float* d = xs.data() + r * kp;
        for (int64_t k = 0; k < w.k; ++k) {
            const int64_t b = k & ~(step - 1), e = k & (step - 1);   // steps are powers of two
            d[b + (e & 1) * half + (e >> 1)] = xr[k];
        }
    }
    const int64_t nblocks = (w.n + 3) / 4, mblocks = (m + 3) / 4;
    const int64_t items = nblocks * mblocks;
    // Tile = 4 weight rows x 4 X rows, n-major so that consecutive tiles reuse the weight rows
    // from cache. A work item of the pool (csrc/work_pool.h) is a run of consecutive tiles,
    // about kItemsPerThread items per thread, so that the threads awake share the work evenly.
    const int64_t per_item = std::max<int64_t>(1, items / (kItemsPerThread * nt));
    parallel_items((items + per_item - 1) / per_item, nt, [&](int64_t chunk) {
        for (int64_t it = chunk * per_item; it < std::min(items, (chunk + 1) * per_item); ++it) {
            const int64_t nb = it / mblocks, mb = it % mblocks;
            const int64_t n0 = nb * 4, nr = std::min<int64_t>(4, w.n - n0);
            const int64_t m0 = mb * 4, mr = std::min<int64_t>(4, m - m0);
            float acc[16];
            if (isa == Int4Isa::avx512)
                int4_detail::tile_avx512(w, xs.data() + m0 * kp, kp, mr, n0, nr, acc);
            else
                int4_detail::tile_avx2(w, xs.data() + m0 * kp, kp, mr, n0, nr, acc);
            for (int64_t r = 0; r < mr; ++r)
                for (int64_t c = 0; c < nr; ++c) y[(m0 + r) * w.n + n0 + c] = finish(acc[r * 4 + c], bias, n0 + c);
        }
    });
}

}  // namespace qrt
