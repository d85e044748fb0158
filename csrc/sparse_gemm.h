// Sparse int8 Linear of the native backend (layouts "csr", "bsr", "nm" with quant "int8"):
// Y = epilogue(quant(X) @ W.T), bit-exact with kernels/reference/packed.py for act_quant
// "dynamic" and "static".
//
// Shapes: X (M, K) float32 row-major, W the weight's 2-D view (N, K) with stored int8 values,
// Y (M, N) float32 row-major.
//
// Numerics: those of int8_gemm.h, with a symmetric weight (no weight zero point, as every
// sparse int8 layout stores, kernels/core/layouts.py). X is quantized row by row by int8_gemm's own
// quantizer (int8_detail::quantize_row_*: float64 true division, round half to even, the
// reference's clamp) into u = qx + 128 in [0, 255]; then
//
//   raw[m, n] = sum over the stored (k, qw) of row n of u[m, k] * qw          (u8 x s8)
//   acc[m, n] = raw[m, n] - (128 + z) * rowsum[n],  rowsum[n] = sum of row n's stored qw
//   Y[m, n]   = float32(((s_w[n] * double(acc)) * s_x[m]) + b[n])           float64, this order
//
// Pruned positions contribute 0 to raw and to rowsum alike, so acc is the reference's exact
// sum_k (qx - z) * qw. The vector paths accumulate in wrapping int32 lanes (vpdpbusd on
// AVX-512; on AVX2 exact int16 pairs of vpmaddubsw on split weights, summed into int32 by
// vpmaddwd, sparse_gemm_avx2.cpp) and subtract the correction modulo 2^32: exact while
// |acc| <= K * 255 * 128 < 2^31, i.e. for K <= kMaxKInt32 (the int8 GEMM's bound, which holds
// for any int8 value, -128 included); larger K runs the scalar path, which accumulates in int64.
//
// Layouts the kernels read (built once, at plan time, from the canonical rows):
//
// * ELL, "sliced ELLPACK" over blocks of 16 output rows x segments of 128 bytes of K (one
//   two-register permute table of activations), or 64 for byte lanes (one register). A vector
//   is one zmm of 16 int32 lanes, lane i = output row 16 b + i; it holds 4 stored weights of
//   that row inside the segment:
//     byte lanes  (ell_lanes == byte): 64 index bytes (the k offset in the segment, 0..127 or
//                 0..63) + 64 weight bytes; activations fetched with vpermi2b (128-byte
//                 segments) or vpermb (64) (AVX-512 VBMI) or, on AVX2, vpshufb + selects; any
//                 pattern (csr, nm, bsr whose blocks are not 4-column aligned). Not built on
//                 CPUs with AVX-512 VNNI but no VBMI (their vector path could not read them).
//                 The segment is sparse_byte_segment()'s unless forced (on AVX-512, sliding
//                 windows (below) for a weight whose 64-byte form needs
//                 sparse_segment_tolerance(its 128-byte vectors) x the vectors or more: see
//                 the packer).
//                 Narrower segments pad more (a vector holds as many weights as the fullest of
//                 its 16 rows has in the segment: 6-18% more vectors on MiniLM's 80% weights,
//                 20-21% on 90% random masks) but fetch for less (on
//                 Zen 4 a vpermb + vpdpbusd pair takes ~1.4 cycles, vpermi2b + vpdpbusd ~1.9;
//                 on AVX2 4 shuffles + 3 selects instead of 8 + 7), and with one register per
//                 activation row the kernel feeds 8 rows per vector instead of 4;
//     dword lanes (ell_lanes == dword): 16 index bytes (the 4-byte column quad in the segment,
//                 0..31) + 64 weight bytes (one quad of 4 consecutive k per lane, zeros where
//                 nothing is stored); activations fetched with vpermi2d. Denser than byte
//                 lanes when the stored weights come in aligned quads (bsr 1x4, 2x4, ...).
//   The vectors of one (block, segment) are as many as its fullest row needs; unused lanes
//   hold weight 0. The packer keeps the lane kind of fewer bytes.
//     sliding windows (byte lanes, segment option 0): each vector of a block carries its own
//                 64-byte window of the activation row, starting at woff[v], the lowest column
//                 any of its 16 rows still has to place (at most round_up(K, 64) - 64); each row
//                 places up to 4 of its next stored weights inside the window, the index byte
//                 being the offset in it. A fixed segment costs as many vectors as its fullest
//                 row needs there, padding the others; a window moves on with the rows, so at
//                 90% random masks a block needs ~0.69x the vectors of 64-byte segments and
//                 ~0.82x of 128-byte ones, at the same 128 bytes a vector (+ 4 for woff). The
//                 kernels load each window per vector and activation row (vpermb on AVX-512,
//                 the 64-byte lookup tree on AVX2), where a segment's tables stay in registers
//                 for its vectors: so windows win where the vectors' bytes or count bound the
//                 call (M = 1, AVX2 at every M its ELL runs, the LLM shapes), and 64-byte
//                 segments keep M >= 16 on AVX-512 for weights that fit a core's L2
//                 (sparse_byte_segment). M = 1 streams every vector
//   once; larger M reuses each vector for 4 activation rows at a time (8 table registers), 8
//   with 64-byte segments.
//   Once ELL exists the canonical rows are dropped and the scalar path reads the vectors.
//   The AVX2 kernel reads the same vectors as two halves of 8 rows (one ymm of 8 int32
//   lanes), the activations looked up without a gather (vpermd / vpshufb on each part of the
//   segment, then blends on the remaining index bits), for up to 4 activation rows at a time,
//   multiplied by one of three exact steps (csrc/sparse_ell_half.h): signed pairs where no ELL
//   weight is -128 (ell_no_min), the split weights otherwise, vpdpbusd on the avx_vnni path.
// * Quad tiles, for bsr weights whose blocks cover whole aligned column quads (C % 4 == 0),
//   batched M: per group of G output rows (G = 4 when R % 4 == 0, else 1) the list of column
//   quads any of them stores, with G x 4 weight bytes per quad. Activations are transposed into
//   tiles of 16 rows, (K/4, 16, 4) bytes, so one quad of 16 activation rows is one 64-byte
//   load, multiplied by each of the G rows' weight dword (lane = activation row); 16 x 16
//   output tiles are transposed in registers into Y. (A small-M kernel on the same quads, 4
//   quads x 4 rows per zmm with broadcast activations, was slower than dword-lane ELL at every
//   M measured, 1 to 16, and was removed.)
//   On AVX2 (quad_tiles_avx2) the same quads, 8 activation rows per ymm, stored as qx (u ^ 0x80)
//   in the same (K/4, 16, 4) tiles: vpmaddubsw of |qx| (vpabsb) against the broadcast weight
//   dword with qx's signs (vpsignb), then vpmaddwd against ones: a pair of products is at most
//   2 x 128 x 127, never saturated, so exact while no quad weight is -128 (quads_no_min; else
//   the path is not offered). Per quad and 8 activation rows: one load and one vpabsb, then per
//   output row of the group a broadcast, vpsignb, vpmaddubsw, vpmaddwd and vpaddd for 32
//   multiply-adds: about the dense AVX2 tile's cost per multiply-add, on the stored quads only.
//   Narrow weights (every quad weight in [-63, 63]: quads_narrow, the converter's 7-bit
//   weights) keep u = qx + 128 in the tiles and skip vpabsb / vpsignb, as the dense narrow tile:
//   a pair is at most 2 x 255 x 63, and the sums are corrected by (128 + z) rowsum.
// * Pairs (AVX2, built where the int8 path is avx2 or avx_vnni at pack time, or on request):
//   each output row's stored weights two at a time in column order, the two columns (uint16)
//   and the two weights as int16 halves of one int32. Activations are transposed per tile of
//   16 rows into (K, 16) int16 = qx, so a pair is two 32-byte loads, two vpunpck{l,h}wd and two
//   vpmaddwd against the broadcast weight pair (lane = activation row): no lookups, exact for
//   any int8. The two shuffles bound the step (about 2 cycles a pair): with one vpdpwssd a
//   half (a third fewer operations, avx_vnni) or 2:4 pairs read pre-interleaved from a tile of
//   each 4-column group's 6 interleavings (no shuffle, 3x the tile bytes), MiniLM's shapes ran
//   no faster (benchmarks/RESULTS.md, "The AVX2 pairs kernel against its floor", "2:4 pattern
//   pairs: a probe"). A work item runs up to two tiles (K <= 512), loading each pair's columns
//   and weights once for both; the epilogue converts the int32 sums to float64 without a
//   shuffle (sparse_gemm_avx2.cpp, pairs_store). Taken from M = kPairsMinM (8; 12 on the avx_vnni path, whose ELL step is one
//   vpdpbusd); below it the AVX2 ELL kernel is faster.
//
// Threads: every output element is computed by one thread, in a fixed order (work items are
// row blocks (AVX-512 ELL: with a group of activation rows where the weight has few blocks,
// sparse_gemm.cpp ell_group_rows), or (row block, activation tile) pairs, handed out by groups
// of tiles that fit L1: tile_item), so results do not depend on the thread count. The thread
// count and the ISA override are int8_gemm's (int8_set_threads, int8_set_isa): "avx512_vnni" runs the AVX-512 paths (ell, quad_tiles; byte-lane ELL also
// needs VBMI); "avx2" (and "avx_vnni") run ell_avx2, the AVX2 kernel on the same ELL vectors
// (either lane kind), and pairs_avx2 from M = 8 where pairs were built (quad tiles have no
// AVX2 kernel); "scalar" runs the scalar path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "int8_gemm.h"

namespace qrt {

constexpr int64_t kSparseBlockRows = 16;    // output rows per ELL block (16 int32 lanes)
constexpr int64_t kSparseSegment = 128;     // activation bytes per ELL segment (2 zmm tables), the most
constexpr int64_t kSparseSegmentNarrow = 64;  // byte lanes may use this instead: one zmm table (vpermb)
constexpr int64_t kPairsColX4MaxK = 16384;    // pairs store 4 x column (uint16, <= 65532) up to this K (pcol_x4)
constexpr int64_t kSparseWindows = 0;         // the segment option of byte lanes over sliding 64-byte windows
constexpr int64_t kSparseTileRows = 16;     // activation rows per quad tile (16 int32 lanes)

// Canonical row form of a sparse int8 weight's 2-D view (N, K): what every layout is
// converted to first (stored zeros kept, they are part of the layout's contract).
struct SparseRows {
    int64_t n = 0, k = 0;
    std::vector<int64_t> indptr;   // (N + 1,), indptr[0] = 0, non-decreasing
    std::vector<int32_t> cols;     // (nnz,), strictly increasing within a row, < K
    std::vector<int8_t> vals;      // (nnz,)
    int64_t nnz() const { return static_cast<int64_t>(cols.size()); }
};

// Converters from the layouts' fields (kernels/core/layouts.py), with every index checked: they
// throw std::invalid_argument naming the first bad entry, so a malformed array is an error,
// never an out-of-bounds read. Index arrays arrive widened to int64 (the binding's job).
//   csr: indptr (N+1,), indices (nnz,) column k, qdata (nnz,)
SparseRows sparse_rows_csr(int64_t n, int64_t k, const int64_t* indptr, const int64_t* indices, int64_t nnz,
                           const int8_t* qdata);
//   bsr: R x C blocks, R | N, C | K; indptr (N/R+1,), indices (nb,) block column, qdata (nb, R, C)
SparseRows sparse_rows_bsr(int64_t n, int64_t k, int64_t r, int64_t c, const int64_t* indptr,
                           const int64_t* indices, int64_t nb, const int8_t* qdata);
//   nm: nn of every mm consecutive k (mm | K, 1 <= nn < mm <= 256); meta (N, meta_cols) uint8
//   bit stream of b-bit positions (b = nm_meta_bits(mm), kernels/core/layouts.py), qdata (N, K/mm*nn)
SparseRows sparse_rows_nm(int64_t n, int64_t k, int64_t nn, int64_t mm, const uint8_t* meta, int64_t meta_cols,
                          const int8_t* qdata);
int nm_meta_bits(int64_t mm);   // the smallest power of two >= ceil(log2(mm)): 1, 2, 4 or 8

enum class EllLanes : int { none = 0, byte = 1, dword = 2 };

// What to build at plan time. "auto" (-1): ELL with the lanes of fewer bytes (byte lanes only
// where sparse_byte_lanes_supported); quads for bsr with C % 4 == 0 (G = 4 when R % 4 == 0).
struct SparsePackOptions {
    int64_t block_r = 0, block_c = 0;   // bsr block shape; 0: not a bsr weight
    int lanes = -1;                     // -1 auto, else an EllLanes value
    int segment = -1;                   // byte lanes' segment: -1 auto (sparse_byte_segment), 64 or 128
    int quad_rows = -1;                 // -1 auto, 0 none, 1 or 4 (4 needs N % 4 == 0)
    int pairs = -1;                     // -1 auto (where the best int8 path is AVX2), 0 no, 1 yes
};

struct SparseInt8Weight {
    // The canonical rows, kept only when no ELL was built (K > kMaxKInt32, or lanes "none"):
    // otherwise the scalar path reads the ELL vectors, and the packed weight stays smaller
    // than dense int8 (at 90% the rows alone are ~5 bytes per stored weight).
    SparseRows rows;
    bool has_rows = true;
    int64_t n = 0, k = 0, nnz = 0;
    int64_t npad = 0;                 // N rounded up to kSparseBlockRows
    AlignedArray<int64_t> rowsum;     // (npad,), 0 past N
    AlignedArray<double> scale;       // (npad,) s_w as float64, 0 past N
    AlignedArray<int32_t> corr0;      // (npad,) 128 * rowsum wrapped to int32: the correction for z = 0
    // ELL (lanes != none)
    EllLanes lanes = EllLanes::none;
    int64_t seg = kSparseSegment;     // ELL segment bytes: 128, or 64 for byte lanes (sparse_byte_segment)
    int64_t nblk = 0, nseg = 0;       // ceil(N / 16), ceil(K / seg) (windows: 1)
    std::vector<int64_t> sptr;        // (nblk * nseg + 1,): vectors of (block b, segment s)
    // Byte lanes over sliding windows (segment option 0): each vector has its own 64-byte window
    // of the activation row, starting at woff[v] (any byte, <= ldu - 64), and nseg = 1, so
    // sptr[b] .. sptr[b + 1] are block b's vectors in window order.
    bool windows = false;
    AlignedArray<int32_t> woff;       // (vectors,) windows only
    bool ell_no_min = false;          // no ELL weight is -128: the AVX2 ELL kernel's signed step is exact
    AlignedArray<uint8_t> ell_idx;    // (vectors, 64) byte lanes, (vectors, 16) dword lanes
    AlignedArray<int8_t> ell_val;     // (vectors, 64)
    int64_t ell_vectors = 0;
    // quads (quad_rows != 0)
    int quad_rows = 0;                // G
    std::vector<int64_t> qptr;        // (N / G + 1,) quads of each group of G rows
    std::vector<uint16_t> qcol;       // (nquads,) column quad k / 4 (< 2^16 whenever K <= kMaxKInt32)
    AlignedArray<int8_t> qw;          // (nquads, G, 4) weights, 0 where a row stores nothing
    int64_t nquads = 0;
    bool quads_no_min = false;        // no quad weight is -128: the AVX2 quad tiles are exact
    bool quads_narrow = false;        // every |quad weight| <= kNarrowQMax: the AVX2 tiles skip the signs
    // pairs (AVX2, activation rows in lanes): each row's stored weights two at a time, in
    // column order; an odd row's last pair repeats its column with weight 0
    bool has_pairs = false;
    std::vector<int64_t> pptr;        // (N + 1,) pairs of each row
    std::vector<uint16_t> pcol;       // (npairs, 2) the two columns (K <= kMaxKInt32 < 2^16), times 4 if pcol_x4()
    AlignedArray<int32_t> pw;         // (npairs,) the two weights as int16: low half, high half
    int64_t npairs = 0;
    size_t nbytes() const;            // bytes held by every packed array
    // pcol holds 4 x column (fits uint16 up to this K): the kernel's loads scale it by 8
    bool pcol_x4() const { return k <= kPairsColX4MaxK; }
};

// Packs `rows` (moved in) with scale (N,) float32 (finite > 0, checked by the caller).
// Throws std::invalid_argument for an impossible option (byte lanes where not supported, G = 4
// with N % 4 != 0).
SparseInt8Weight sparse_int8_pack(SparseRows rows, const float* scale, const SparsePackOptions& opt);

// ell and quad_tiles: the AVX-512 kernels; ell_avx2: the AVX2 kernel on the same ELL vectors;
// pairs_avx2: the AVX2 kernel on the pairs, 16 activation rows in int16 lanes (M >= kPairsMinM);
// quad_tiles_avx2: the AVX2 kernel on the quads (bsr with C % 4 == 0, no -128 weight).
enum class SparsePath : int {
    automatic = -1, scalar = 0, ell = 1, quad_tiles = 2, ell_avx2 = 3, pairs_avx2 = 4, quad_tiles_avx2 = 5
};
const char* sparse_path_name(SparsePath p);
// The path sparse_int8_linear takes for M rows on `isa` (automatic resolved).
SparsePath sparse_choose_path(const SparseInt8Weight& w, int64_t m, Int8Isa isa);
// Whether `path` can run `w` on `isa` (its structure was built, the CPU has what it needs).
bool sparse_path_available(const SparseInt8Weight& w, SparsePath path, Int8Isa isa);
bool sparse_has_vbmi();
// Whether byte-lane ELL may be built: the AVX-512 kernel reads it with VBMI only, the AVX2 and
// scalar ones always; so everywhere except on CPUs with AVX-512 VNNI but no VBMI.
bool sparse_byte_lanes_supported();
// The segment option byte lanes are built with by default: kSparseWindows (0, sliding windows)
// where the int8 path at pack time is AVX2-class or scalar (the AVX2 lookup of 64 bytes is 4
// shuffles + 3 selects, of 128 bytes 8 + 7, and windows need the fewest vectors); on AVX-512,
// 64 where the CPU's one-table byte permute (vpermb) runs a (permute, vpdpbusd) pair at least
// 1.05x faster than the two-table one (vpermi2b): measured once per process by a short
// register-only loop (sparse_permute_probe; a busy host moves it, on Zen 4 between 1.13x and
// 1.48x: sparse_gemm.cpp); windows otherwise (where 128-byte segments were built before). All
// are exact; only the speed differs.
int64_t sparse_byte_segment();
// The probe behind it: nanoseconds per (permute, vpdpbusd) pair for vpermi2b and vpermb (best of
// a few short runs), or {0, 0} without AVX-512 VBMI + VNNI.
std::pair<double, double> sparse_permute_probe();
// Where that segment is 64 on an AVX-512 path, the packer still takes sliding windows for a
// weight whose 64-byte form needs this many times the vectors of its 128-byte form (wide_vectors
// of them) or more: 1.2, or 0.9 x the probe's gain (vpermi2b pair / vpermb pair, at most 2)
// where the gain is 1.6 or more and the 128-byte vectors take at most 1 MiB (sparse_gemm.cpp;
// the rule chose 128-byte segments before windows existed, which need fewer vectors still).
double sparse_segment_tolerance(int64_t wide_vectors);

// Y (M, N) = epilogue(quant(X) @ W.T) as above. x (M, K) float32 row-major, bias float64
// readable up to w.npad or nullptr, y (M, N) float32 row-major, every element written. M may be
// 0. path automatic: sparse_choose_path; otherwise it must be available (std::invalid_argument).
// act: the activation (activation.h) applied to each output after its rounding, in one pass
// over Y on the call's threads: the bits of activation_inplace on Y afterwards, without the copy
// a separate activation op makes.
void sparse_int8_linear(const SparseInt8Weight& w, const float* x, int64_t m, const double* bias,
                        const Int8ActQuant& aq, float* y, SparsePath path = SparsePath::automatic,
                        Activation act = Activation::none);
// The same on an explicit ISA and thread count (tests, benchmarks).
void sparse_int8_linear_isa(const SparseInt8Weight& w, const float* x, int64_t m, const double* bias,
                            const Int8ActQuant& aq, float* y, SparsePath path, Int8Isa isa, int threads,
                            Activation act = Activation::none);

}  // namespace qrt
