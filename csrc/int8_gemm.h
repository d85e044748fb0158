// int8 Linear of the native backend: Y = epilogue(quant(X) @ W.T), bit-exact with
// kernels/reference/packed.py (packed_linear_ref) for act_quant "dynamic" and "static".
//
// Shapes: X (M, K) float32 row-major, W (N, K) int8 (the "int8" layout's qdata), Y (M, N)
// float32 row-major.
//
// Numerics (docs/CONVERTER.md "Numerics", the reference literally):
//
//   dynamic, per row m:  s_x[m] = max_k |x[m, k]| / 127 (1 for an all-zero row),
//                        qx = clamp(nearbyint(x / s_x[m]), -127, 127), in float64;
//   static:              s_x = act_scale, z = act_zero_point,
//                        qx = clamp(nearbyint(x / s_x) + z, -128, 127), in float64;
//   acc[m, n] = sum_k (qx[m, k] - z) * (qw[n, k] - zw[n])                  exact integer
//   Y[m, n]   = float32(((s_w[n] * double(acc)) * s_x[m]) + b[n])         float64, this order
//   Y[m, n]   = act(Y[m, n])      the optional epilogue activation (activation.h) on that
//                                 float32 value, applied to each tile in registers (ReLU) or
//                                 in L1 right after its store (the GELUs)
//
// nearbyint under the default rounding mode is round half to even, as numpy's rint. The
// clamp uses selects in which NaN becomes 127; a row holding a NaN (or, dynamic, an inf) has
// s_x = NaN, so the whole output row is NaN, as the reference's is.
//
// u8 x s8 (vpdpbusd multiplies unsigned by signed bytes): activations are stored as
// u = qx + 128 in [0, 255], weights as their raw qdata, and the kernel's raw sum is undone in
// the epilogue:
//
//   raw[m, n] = sum_k u[m, k] qw[n, k]
//   acc[m, n] = raw[m, n] - (128 + z) colsum[n] - zw[n] row_corr[m]
//   colsum[n] = sum_k qw[n, k] (plan time),  row_corr[m] = sum_k qx[m, k] - K z (prologue)
//
// int32 overflow: the vector paths accumulate in int32 lanes that wrap (vpdpbusd, not the
// saturating vpdpbusds; vpmaddwd sums two u8 x s8 products, at most 2 * 255 * 128, exactly),
// and the corrections wrap too, so the result is exact modulo 2^32, hence exact whenever the
// true |acc| < 2^31. |qx - z| <= 255 and |qw - zw| <= 255 give |acc| <= K * 255 * 255, so
// the vector paths are used for K <= kMaxKInt32 only; larger K runs the scalar path, which
// accumulates in int64.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "activation.h"
#include "numeric_bounds.h"

namespace qrt {

constexpr int64_t kInt8Panel = 64;        // output columns per weight panel (4 zmm of 16 int32)
constexpr int64_t kInt8MR = 4;            // rows per micro-tile (the AVX2 and scalar paths)
// Rows per AVX-VNNI micro-tile: 6 rows x 16 columns keep 12 ymm accumulators in flight. With 4
// rows (8 accumulators) each k step's 8 vpdpbusd wait for the previous step's (latency 5 cycles
// on Golden Cove, 2 per cycle): at most 8 / 10 of the instruction rate; 12 cover the latency
// and still fit the 16 ymm registers with the 2 weight vectors and the broadcast row.
constexpr int64_t kAvxVnniMR = 6;
// Rows per AVX-512 VNNI micro-tile: 6 x 64 columns, 24 zmm accumulators (of 32), so each k step's
// 4 weight loads feed 24 vpdpbusd instead of 16. Measured on an Intel Xeon masked to AVX-512
// VNNI (benchmarks/as_cpu.py), 2 threads, the shapes table at M = 16 and 128 against
// onnxruntime int8 in the same process: 1.10-1.11x with 4 rows, 1.15-1.17x with 6.
constexpr int64_t kAvx512MR = 6;
// the tallest tile of the paths that take one tile at a time (the driver's stack scratch)
constexpr int64_t kMaxStackTileRows = std::max({kInt8MR, kAvxVnniMR, kAvx512MR});
constexpr int64_t kAmxRows = 16;          // rows of an AMX tile register (int8_gemm_amx.cpp)
constexpr int64_t kAmxMR = 2 * kAmxRows;  // rows per AMX micro-tile: two tile registers tall
constexpr int64_t kAmxK4 = 16;            // k steps of 4 bytes per AMX tile (64 bytes a row)
// A micro-tile of fewer rows than this takes the AVX-512 tile: the AMX one costs as much for
// 1 row as for 16. Measured (Intel Xeon with AMX, 2 vCPU, 2 threads; avx512_vnni time / amx
// time, the whole Linear): (K, N) = (384, 1536) M = 6: 0.99, 8: 1.03, 12: 1.26, 16: 1.35;
// (768, 768) 8: 1.14, 16: 1.72; (768, 3072) 8: 1.36, 16: 2.07.
constexpr int64_t kAmxMinRows = 8;

// The GEMM code paths. All give the same int32 (or int64) accumulators, hence the same bits.
// avx_vnni: VEX vpdpbusd on ymm (Intel Alder Lake and later client CPUs, Zen 5 without
// AVX-512 enabled); the AVX2 kernels serve it wherever it has no kernel of its own.
// amx: AMX-INT8 tiles (Intel Xeon from Sapphire Rapids on) for the int8 GEMM's tiles of
// kAmxMinRows rows or more, AVX-512 VNNI for everything else.
enum class Int8Isa : int { scalar = 0, avx2 = 1, avx512_vnni = 2, avx_vnni = 3, amx = 4 };
// avx2 or avx_vnni: the ISAs whose other kernels (sparse, int4, fused) are the AVX2 ones.
inline bool int8_isa_is_avx2_class(Int8Isa isa) { return isa == Int8Isa::avx2 || isa == Int8Isa::avx_vnni; }
// avx512_vnni or amx: the ISAs whose other kernels are the AVX-512 ones.
inline bool int8_isa_is_avx512_class(Int8Isa isa) { return isa == Int8Isa::avx512_vnni || isa == Int8Isa::amx; }

const char* int8_isa_name(Int8Isa isa);
// The best path this CPU supports (cpu_features.cpp).
Int8Isa int8_best_isa();
bool int8_isa_supported(Int8Isa isa);
// The path int8_linear takes: the override if one is set (int8_set_isa), else the best one.
Int8Isa int8_current_isa();
// "auto" clears the override; "scalar", "avx2", "avx_vnni" or "avx512_vnni" forces that path. Throws
// std::invalid_argument for an unknown name or a path this CPU cannot run.
void int8_set_isa(const std::string& name);
// Whether a path is forced (int8_set_isa with a name other than "auto", i.e. QRT_NATIVE_ISA or
// set_int8_isa). The int4 and fused ops' "auto" paths follow a forced int8 path (no wider ISA
// than it), so that forcing one tests the whole backend on that ISA; unforced, they take the
// best path this CPU has.
bool int8_isa_forced();

// Threads of the native kernels (work_pool.h: the int8 / sparse / int4 GEMMs, Attention,
// SkipLayerNorm and the gather). Unset, OpenMP's default count (1 without OpenMP). n >= 1.
void int8_set_threads(int n);
int int8_get_threads();
bool int8_has_openmp();

// 64-byte aligned array: a weight panel row (64 columns x 4 bytes) is then one cache line
// pair-aligned load, never split across lines.
template <typename T>
struct AlignedArray {
    struct Free {
        void operator()(T* p) const;
    };
    std::unique_ptr<T[], Free> data;
    size_t size = 0;
    void allocate(size_t n);   // uninitialised
    T* get() const { return data.get(); }
    T& operator[](size_t i) const { return data.get()[i]; }
};

// Weights with every |qw| <= kNarrowQMax (quantized to the narrow range, the converter's
// weight_bits = 7) take the AVX2 narrow tile: vpmaddubsw on u = qx + 128 (<= 255) is exact
// for them (2 * 255 * 63 = 32130 <= 32767), with no vpsignb (int8_gemm_avx2.cpp).
constexpr int32_t kNarrowQMax = 63;

// A weight prepared once, at plan time.
struct Int8PackedWeight {
    int64_t n = 0, k = 0;
    int64_t k4 = 0;          // ceil(K / 4): k steps of one 32-bit lane (4 bytes)
    int64_t k4_stored = 0;   // k4 rounded up to kAmxK4: the k steps each panel stores (the
                             // AMX tile reads whole 64-byte chunks; the other tiles read k4)
    int64_t panels = 0;      // ceil(N / kInt8Panel)
    bool has_zero_point = false;
    bool has_q_min = false;  // some qw is -128: the AVX2 vpmaddubsw tile is not exact for it
    int32_t max_abs_q = 0;   // max |qw|: at most kNarrowQMax takes the AVX2 narrow tile
    // (panels, k4_stored, kInt8Panel, 4) int8: panel p, k step kk, column c holds
    // qw[p * 64 + c, 4 kk .. 4 kk + 3]; padded columns and k hold 0.
    AlignedArray<int8_t> data;
    // per column, padded to panels * kInt8Panel with 0
    AlignedArray<int64_t> colsum;     // sum_k qw[n, k] (raw qdata, zero point not subtracted)
    AlignedArray<int32_t> col_corr0;  // 128 * colsum[n] modulo 2^32: the correction when z = 0
    AlignedArray<int32_t> zero_point; // zw[n] (0 for a symmetric weight)
    AlignedArray<double> scale;       // s_w[n], float32 -> float64 exactly
    size_t nbytes() const;
    int64_t padded_n() const { return panels * kInt8Panel; }
    int64_t panel_bytes() const { return k4_stored * kInt8Panel * 4; }
};

// qdata (N, K) int8 row-major, scale (N,) float32 > 0, zero_point (N,) int8 or nullptr.
// Throws std::invalid_argument for N < 1 or K < 1.
Int8PackedWeight int8_pack_weight(const int8_t* qdata, int64_t n, int64_t k, const float* scale,
                                  const int8_t* zero_point);

struct Int8ActQuant {
    bool is_static = false;   // false: dynamic per-row scales
    double scale = 1.0;       // static s_x, finite > 0 (checked by the caller)
    int32_t zero_point = 0;   // static z in [-128, 127]
};

// Y (M, N) = act(epilogue(quant(X) @ W.T)) as described above. x (M, K) float32 row-major, bias
// float64 or nullptr, readable up to w.padded_n() (the vector epilogues read whole panels;
// entries from N on are never used), y (M, N) float32 row-major, every element written.
// M may be 0.
// Runs on int8_current_isa() (scalar when K > kMaxKInt32) with int8_get_threads() threads;
// the result does not depend on either.
void int8_linear(const Int8PackedWeight& w, const float* x, int64_t m, const double* bias,
                 const Int8ActQuant& aq, float* y, Activation act = Activation::none);
// The same on an explicit path (tests, benchmarks); isa must be supported.
void int8_linear_isa(const Int8PackedWeight& w, const float* x, int64_t m, const double* bias,
                     const Int8ActQuant& aq, float* y, Int8Isa isa, int threads,
                     Activation act = Activation::none);

// y[i] = act(y[i]) for i < count, in place: the epilogue activation on its own (for outputs
// that do not come from the int8 GEMM, e.g. the weight-only Linear's BLAS matmul, the sparse
// Linears), on the int8 path's threads where count is large (int8_gemm.cpp). Same bits as the
// fused epilogue on every path and for any split. The _isa form runs on the calling thread;
// the _threads form on an explicit path and thread count (the sparse Linear's own).
void activation_inplace(float* y, int64_t count, Activation act);
void activation_inplace_isa(float* y, int64_t count, Activation act, Int8Isa isa);
void activation_inplace_threads(float* y, int64_t count, Activation act, Int8Isa isa, int threads);

}  // namespace qrt
