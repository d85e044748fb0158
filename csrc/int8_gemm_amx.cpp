// int8 Linear, AMX path (Intel Xeon from Sapphire Rapids on): the GEMM's tiles on AMX-INT8,
// the rows' quantizer and the epilogue from the AVX-512 VNNI path. Numerics and layouts:
// int8_gemm.h.
//
// TDPBUSD multiplies a tile of unsigned bytes (16 rows x 64 bytes of u = qx + 128) by a tile of
// signed bytes laid out as 16 rows of k steps, each 16 columns x 4 bytes, and adds every group
// of four products to an int32 of the 16 x 16 accumulator tile without saturation, wrapping
// modulo 2^32 like vpdpbusd: the same raw sums as the AVX-512 tile, so the same corrections
// and the same bits. The weight panel's layout (k step, 64 columns, 4 bytes) is already that
// B layout: columns 16 j .. 16 j + 15 of 16 k steps are 16 rows of 64 bytes at stride 256.
//
// One call: a whole row block of the driver x one 64-column panel, as micro-tiles of 32 rows
// (kAmxMR), each in two passes of 32 columns (pass_amx: 2 x 2 accumulator tiles); the K loop
// runs over 64-byte chunks (int8_pack_weight stores k4 rounded up to kAmxK4 zero-filled steps;
// the driver's rows are 128 there). The accumulators go through memory to the AVX-512
// epilogue (store_rows_avx512), each pass's while the next pass's tiles run.
//
// Peak: a TDPBUSD is 16 x 16 x 64 multiply-adds in 16 cycles, 2048 int8 operations a cycle a
// core: 8-16x AVX-512 VNNI's 128-256 (one or two 512-bit vpdpbusd a cycle; the Xeon measured
// in RESULTS.md has one: 15 TOP/s against 1.97 on 2 vCPUs). A micro-tile of fewer than
// kAmxMinRows rows costs as much as a full one, so those rows take the AVX-512 tile instead.
//
// Linux hands a process the 8 KB of tile state only on request (arch_prctl
// ARCH_REQ_XCOMP_PERM, kernel >= 5.16): amx_permitted() asks once, and the path is supported
// only where that succeeds (int8_isa_supported). The tile configuration is per thread and
// other libraries in the process (onnxruntime's MLAS, oneDNN) load their own, so every tile
// call loads ours and releases the tiles at its end (the released state is not saved on a
// context switch).
#include "int8_gemm_kernels.h"

#if QRT_INT8_AMX

#include <sys/syscall.h>
#include <unistd.h>

#include "simd.h"

#define QRT_TARGET_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni")))

namespace qrt {
namespace int8_detail {

namespace {

constexpr long kArchReqXcompPerm = 0x1023;   // arch_prctl code (asm/prctl.h)
constexpr long kXfeatureXtiledata = 18;      // the tile data's XSAVE feature number

// The 64-byte operand of LDTILECFG (Intel SDM vol. 1, 3.5.1): palette 1, then per tile its
// bytes per row and its rows.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Every tile used is 16 rows x 64 bytes: the accumulators (16 x 16 int32), the rows' chunk
// (16 rows x 64 u8) and the panel's column groups (16 k steps x 16 columns x 4 int8).
constexpr TileConfig full_tiles() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = static_cast<uint8_t>(kAmxRows);
    }
    return c;
}
// a constant, not a function-local static: no initialisation guard in the GEMM's items
constexpr TileConfig kFullTiles = full_tiles();

constexpr int64_t kStepBytes = kInt8Panel * 4;   // one k step of a panel: 64 columns x 4 bytes

constexpr int64_t kHalf = kInt8Panel / 2;   // columns of one pass (two accumulator tiles wide)

// The epilogue of one finished pass (rows x 32 columns of sums in acc, row stride kHalf), run a
// few rows at a time between the next pass's TDPBUSD: the AMX unit and the vector units work
// at once (the epilogue's float64 arithmetic costs about as much as the tiles' sums).
struct PendingEpilogue {
    const int32_t* acc = nullptr;
    int64_t rows = 0, done = 0;
    int64_t m0 = 0, n0 = 0;
    float* y = nullptr;
    int64_t ldy = 0;
    const Epilogue* ep = nullptr;
    void run(int64_t count) {
        count = std::min(count, rows - done);
        if (count <= 0) return;
        store_rows_avx512(count, kHalf / 16, acc + done * kHalf, kHalf, *ep, m0 + done, n0, y + done * ldy, ldy);
        done += count;
    }
    void finish() { run(rows); }
};

// One 64-byte k chunk of 16 rows into accumulators tmm0 / tmm1: the rows' chunk (at u) in tile
// A, the chunk's columns 0-15 / 16-31 (at b, a pass's first column) in tiles B0 / B1. A macro:
// GCC's tile intrinsics paste the tile number into their assembly, so it must be a literal.
#define QRT_CHUNK_16_ROWS(A, B0, B1, u, ldu, b) \
    _tile_loadd(A, u, ldu);                     \
    _tile_loadd(B0, b, kStepBytes);             \
    _tile_dpbusd(0, A, B0);                     \
    _tile_loadd(B1, (b) + 64, kStepBytes);      \
    _tile_dpbusd(1, A, B1);

// One pass: the sums of u's rows (TALL: 32, else 16) x 32 columns of the panel (p: the
// panel + 4 * the first column), over `chunks` 64-byte k chunks, into acc (row stride kHalf);
// `pending` advances by about rows / chunks rows per chunk. Tiles: 2 x 2 accumulators (tmm0-3:
// rows 0-15 / 16-31 x columns 0-15 / 16-31), the rows' chunk in tmm4 / tmm5, the columns' in
// tmm6 / tmm7. Tiles are not renamed: a load into a tile waits until every TDPBUSD issued
// before it has read that tile. In this order each load has at least one TDPBUSD that does
// not read its tile between it and the last reader, so the next chunk's loads overlap this
// chunk's arithmetic (a 1 x 4 layout, one rows tile read by all four TDPBUSD, waited a whole
// load each chunk: 4.2 TOP/s on 2 threads for (M, K, N) = (512, 768, 3072), 27% of the peak).
template <bool TALL>
QRT_TARGET_AMX void pass_amx(const uint8_t* u, int64_t ldu, const int8_t* p, int64_t chunks, int32_t* acc,
                             PendingEpilogue& pending) {
    const int64_t per_chunk = (pending.rows - pending.done + chunks - 1) / chunks;
    const uint8_t* u1 = u + kAmxRows * ldu;
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (TALL) {
        _tile_zero(2);
        _tile_zero(3);
    }
    int64_t c = 0;
    if constexpr (!TALL) {
        // 16 rows: tmm2 / tmm3 are free, so two chunks at a time with their operands in
        // different tiles (rows tmm4 / tmm5, columns tmm6, tmm7 / tmm2, tmm3)
        for (; c + 2 <= chunks; c += 2) {
            const int8_t* b = p + c * kAmxK4 * kStepBytes;
            const int8_t* b1 = b + kAmxK4 * kStepBytes;
            QRT_CHUNK_16_ROWS(4, 6, 7, u + 64 * c, ldu, b)
            QRT_CHUNK_16_ROWS(5, 2, 3, u + 64 * (c + 1), ldu, b1)
            pending.run(2 * per_chunk);
        }
    }
    for (; c < chunks; ++c) {
        const int8_t* b = p + c * kAmxK4 * kStepBytes;
        QRT_CHUNK_16_ROWS(4, 6, 7, u + 64 * c, ldu, b)
        if constexpr (TALL) {
            _tile_loadd(5, u1 + 64 * c, ldu);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
        }
        pending.run(per_chunk);
    }
    pending.finish();
    constexpr int64_t ldc = kHalf * sizeof(int32_t);
    _tile_stored(0, acc, ldc);
    _tile_stored(1, acc + 16, ldc);
    if constexpr (TALL) {
        _tile_stored(2, acc + kAmxRows * kHalf, ldc);
        _tile_stored(3, acc + kAmxRows * kHalf + 16, ldc);
    }
}

#undef QRT_CHUNK_16_ROWS

}  // namespace

QRT_TARGET_AMX double amx_peak_spin(int64_t iters) {
    alignas(64) uint8_t operand[kAmxRows * 64];
    for (size_t i = 0; i < sizeof operand; ++i) operand[i] = static_cast<uint8_t>(i);
    _tile_loadconfig(&kFullTiles);
    _tile_loadd(4, operand, 64);
    _tile_loadd(5, operand, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t it = 0; it < iters; ++it) {   // four independent accumulators
        _tile_dpbusd(0, 4, 5);
        _tile_dpbusd(1, 4, 5);
        _tile_dpbusd(2, 4, 5);
        _tile_dpbusd(3, 4, 5);
    }
    alignas(64) int32_t acc[4][kAmxRows * 16];
    _tile_stored(0, acc[0], 64);
    _tile_stored(1, acc[1], 64);
    _tile_stored(2, acc[2], 64);
    _tile_stored(3, acc[3], 64);
    _tile_release();
    double total = 0;
    for (const auto& a : acc) total += a[0];
    return total;
}

bool amx_permitted() {
    static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    return granted;
}

QRT_TARGET_AMX void tile_amx(int64_t rows, const uint8_t* u, int64_t ldu, const int8_t* panel, int64_t k4,
                             const Epilogue& ep, int64_t m0, int64_t n0, float* y, int64_t ldy) {
    const int64_t chunks = (k4 + kAmxK4 - 1) / kAmxK4;
    // two pass buffers: one being summed into, one whose epilogue is pending
    alignas(64) int32_t acc[2][kAmxMR * kHalf];
    int buf = 0;
    PendingEpilogue pending;
    pending.ep = &ep;
    pending.ldy = ldy;
    bool configured = false;
    for (int64_t r = 0; r < rows; r += kAmxMR) {
        const int64_t tile_rows = std::min(kAmxMR, rows - r);
        if (tile_rows < kAmxMinRows) {   // the last rows of the block: the AVX-512 tile
            pending.finish();
            for (int64_t q = r; q < rows; q += kAvx512MR)
                tile_avx512(std::min(kAvx512MR, rows - q), u + q * ldu, ldu, panel, k4, ep, m0 + q, n0, y + q * ldy, ldy);
            break;
        }
        if (!configured) {
            _tile_loadconfig(&kFullTiles);
            configured = true;
        }
        for (int64_t half = 0; half < 2; ++half) {
            const int8_t* p = panel + 4 * kHalf * half;
            if (tile_rows > kAmxRows)
                pass_amx<true>(u + r * ldu, ldu, p, chunks, acc[buf], pending);
            else
                pass_amx<false>(u + r * ldu, ldu, p, chunks, acc[buf], pending);
            pending.acc = acc[buf];
            pending.rows = tile_rows;
            pending.done = 0;
            pending.m0 = m0 + r;
            pending.n0 = n0 + kHalf * half;
            pending.y = y + r * ldy + kHalf * half;
            buf ^= 1;
        }
    }
    if (configured) _tile_release();
    pending.finish();
}

}  // namespace int8_detail
}  // namespace qrt

#else

namespace qrt {
namespace int8_detail {
bool amx_permitted() { return false; }
double amx_peak_spin(int64_t) { return 0.0; }
}  // namespace int8_detail
}  // namespace qrt

#endif  // QRT_INT8_AMX
