// Numeric bounds of the int8 GEMM, defined once for C++ (kernels/core/bounds.py is the Python
// twin, and the extension's build_info() reports these so a test ties the two together).
// Every zero-point-corrected int8 product is at most 255 * 255 in magnitude, so a sum of K
// of them is bounded by K * 255 * 255 (docs/CONVERTER.md, "Numerics").
#pragma once

#include <cstdint>

namespace qrt {

constexpr int64_t kMaxInt8Product = 255 * 255;
// int32 accumulation (wrapping vector lanes) is exact up to this K: 33025.
constexpr int64_t kMaxKInt32 = 2147483647LL / kMaxInt8Product;
// float64 accumulation (the reference) and the scalar path's int64 -> float64 are exact below it.
constexpr int64_t kMaxExactK = (int64_t(1) << 53) / kMaxInt8Product;

}  // namespace qrt
