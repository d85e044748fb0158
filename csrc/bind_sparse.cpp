// pybind11 bindings of the sparse int8 Linear (sparse_gemm.h), added to the one module by
// bindings.cpp's call of bind_sparse(m).
//
// Every array is checked here (dtype, contiguity, shape) and every index by the converters in
// sparse_gemm.cpp (indptr monotone from 0 to the stored count, indices in range and strictly
// increasing within a row, N:M positions < m, ascending, trailing meta bits 0): a malformed
// weight is a TypeError / ValueError, never a crash. The reader (runtime/format.py ->
// kernels/core/layouts.py check) validates the same things for a file; these checks are repeated
// because the binding can be called with any arrays.
//
// The argument helpers shared with the other binding files are in bind_checks.h.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "activation.h"
#include "sparse_gemm.h"
#include "bind_checks.h"

namespace py = pybind11;

namespace {

using qrt::bind::bias_array;
using qrt::bind::copy_bias_f64;
using qrt::bind::output_f32;
using qrt::bind::shape_str;
using qrt::bind::dtype_str;
using qrt::bind::has_dtype;
using qrt::bind::as_array;
using qrt::bind::as_array_of;
using qrt::bind::require_c_contiguous;

void require_ndim(const py::array& a, const char* what, py::ssize_t ndim, const std::string& expected) {
    if (a.ndim() != ndim) throw py::value_error(std::string(what) + " has shape " + shape_str(a) + ", expected " + expected);
}

void require_len(const py::array& a, const char* what, int64_t len, const std::string& why) {
    require_ndim(a, what, 1, "(" + std::to_string(len) + ",)" + why);
    if (a.shape(0) != len)
        throw py::value_error(std::string(what) + " has shape " + shape_str(a) + ", expected (" + std::to_string(len) +
                              ",)" + why);
}

// A 1-D integer index array (one of the layouts' index dtypes) widened to int64.
std::vector<int64_t> index_array(const py::handle& obj, const char* what, bool allow_narrow) {
    py::array a = as_array(obj, what);
    require_ndim(a, what, 1, "a 1-D array");
    require_c_contiguous(a, what);
    const py::ssize_t n = a.shape(0);
    std::vector<int64_t> out(n);
    auto widen = [&](auto tag) {
        using T = decltype(tag);
        const T* p = static_cast<const T*>(a.data());
        for (py::ssize_t i = 0; i < n; ++i) out[i] = static_cast<int64_t>(p[i]);
    };
    if (has_dtype<int32_t>(a)) widen(int32_t{});
    else if (has_dtype<int64_t>(a)) widen(int64_t{});
    else if (allow_narrow && has_dtype<uint8_t>(a)) widen(uint8_t{});
    else if (allow_narrow && has_dtype<uint16_t>(a)) widen(uint16_t{});
    else
        throw py::type_error(std::string(what) + " must have dtype " +
                             (allow_narrow ? "uint8, uint16, int32 or int64" : "int32 or int64") + ", got " + dtype_str(a));
    return out;
}

std::pair<int64_t, int64_t> shape_nk(const py::tuple& shape) {
    if (shape.size() != 2) throw py::value_error("shape must be (N, K)");
    const int64_t n = shape[0].cast<int64_t>(), k = shape[1].cast<int64_t>();
    if (n < 1 || k < 1)
        throw py::value_error("shape (" + std::to_string(n) + ", " + std::to_string(k) + ") must have N >= 1 and K >= 1");
    return {n, k};
}

int lanes_option(const std::string& lanes) {
    if (lanes == "auto") return -1;
    if (lanes == "none") return static_cast<int>(qrt::EllLanes::none);
    if (lanes == "byte") return static_cast<int>(qrt::EllLanes::byte);
    if (lanes == "dword") return static_cast<int>(qrt::EllLanes::dword);
    throw py::value_error("lanes = '" + lanes + "', expected 'auto', 'none', 'byte' or 'dword'");
}

const char* lanes_name(qrt::EllLanes l) {
    switch (l) {
        case qrt::EllLanes::byte: return "byte";
        case qrt::EllLanes::dword: return "dword";
        default: return "none";
    }
}

qrt::SparsePath path_option(const std::string& path) {
    for (auto p : {qrt::SparsePath::automatic, qrt::SparsePath::scalar, qrt::SparsePath::ell, qrt::SparsePath::quad_tiles,
                   qrt::SparsePath::ell_avx2, qrt::SparsePath::pairs_avx2, qrt::SparsePath::quad_tiles_avx2})
        if (path == qrt::sparse_path_name(p)) return p;
    throw py::value_error("path = '" + path + "', expected 'auto', 'scalar', 'ell', 'quad_tiles', 'ell_avx2', 'pairs_avx2' "
                          "or 'quad_tiles_avx2'");
}

// qdata: int8, C-contiguous, of `count` elements in the given shape (checked by the caller).
const int8_t* qdata_ptr(const py::array& q) {
    require_c_contiguous(q, "qdata");
    return static_cast<const int8_t*>(q.data());
}

// Scale (N,) float32 finite > 0, then the plan-time packing; converter errors -> ValueError.
template <typename MakeRows>
std::unique_ptr<qrt::SparseInt8Weight> pack(int64_t n, const py::object& scale_obj, qrt::SparsePackOptions opt,
                                            MakeRows make_rows) {
    py::array s = as_array_of<float>(scale_obj, "scale", "float32");
    require_len(s, "scale", n, " (one per output row)");
    require_c_contiguous(s, "scale");
    const float* sp = static_cast<const float*>(s.data());
    for (int64_t i = 0; i < n; ++i)
        if (!(std::isfinite(sp[i]) && sp[i] > 0))
            throw py::value_error("scale[" + std::to_string(i) + "] = " + std::to_string(sp[i]) + ", expected finite and > 0");
    try {
        return std::make_unique<qrt::SparseInt8Weight>(qrt::sparse_int8_pack(make_rows(), sp, opt));
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

std::unique_ptr<qrt::SparseInt8Weight> make_csr(const py::object& indptr_obj, const py::object& indices_obj,
                                                const py::object& qdata_obj, const py::object& scale_obj,
                                                const py::tuple& shape, const std::string& lanes, int quad_rows, int pairs, int segment) {
    const auto [n, k] = shape_nk(shape);
    const std::vector<int64_t> indptr = index_array(indptr_obj, "indptr", false);
    const std::vector<int64_t> indices = index_array(indices_obj, "indices", true);
    if (static_cast<int64_t>(indptr.size()) != n + 1)
        throw py::value_error("indptr has " + std::to_string(indptr.size()) + " entries, expected N + 1 = " + std::to_string(n + 1));
    py::array q = as_array_of<int8_t>(qdata_obj, "qdata", "int8");
    require_len(q, "qdata", static_cast<int64_t>(indices.size()), " (one per index)");
    const int8_t* qp = qdata_ptr(q);
    qrt::SparsePackOptions opt;
    opt.lanes = lanes_option(lanes);
    opt.quad_rows = quad_rows;
    opt.pairs = pairs;
    opt.segment = segment;
    return pack(n, scale_obj, opt, [&] {
        return qrt::sparse_rows_csr(n, k, indptr.data(), indices.data(), static_cast<int64_t>(indices.size()), qp);
    });
}

std::unique_ptr<qrt::SparseInt8Weight> make_bsr(const py::object& indptr_obj, const py::object& indices_obj,
                                                const py::object& qdata_obj, const py::object& scale_obj,
                                                const py::tuple& shape, const std::string& lanes, int quad_rows, int pairs, int segment) {
    const auto [n, k] = shape_nk(shape);
    py::array q = as_array_of<int8_t>(qdata_obj, "qdata", "int8");
    require_ndim(q, "qdata", 3, "(nb, R, C)");
    const int64_t nb = q.shape(0), r = q.shape(1), c = q.shape(2);
    if (r < 1 || c < 1 || n % r || k % c)
        throw py::value_error("qdata has shape " + shape_str(q) + ": block_shape (R, C) = (" + std::to_string(r) + ", " +
                              std::to_string(c) + ") does not tile (N, K) = (" + std::to_string(n) + ", " +
                              std::to_string(k) + ")");
    const std::vector<int64_t> indptr = index_array(indptr_obj, "indptr", false);
    const std::vector<int64_t> indices = index_array(indices_obj, "indices", true);
    if (static_cast<int64_t>(indptr.size()) != n / r + 1)
        throw py::value_error("indptr has " + std::to_string(indptr.size()) + " entries, expected N / R + 1 = " +
                              std::to_string(n / r + 1));
    if (static_cast<int64_t>(indices.size()) != nb)
        throw py::value_error("indices has " + std::to_string(indices.size()) + " entries, qdata " + std::to_string(nb) + " blocks");
    const int8_t* qp = qdata_ptr(q);
    qrt::SparsePackOptions opt;
    opt.block_r = r;
    opt.block_c = c;
    opt.lanes = lanes_option(lanes);
    opt.quad_rows = quad_rows;
    opt.pairs = pairs;
    opt.segment = segment;
    return pack(n, scale_obj, opt, [&] { return qrt::sparse_rows_bsr(n, k, r, c, indptr.data(), indices.data(), nb, qp); });
}

std::unique_ptr<qrt::SparseInt8Weight> make_nm(const py::object& meta_obj, const py::object& qdata_obj,
                                               const py::object& scale_obj, const py::tuple& shape, int64_t nn,
                                               int64_t mm, const std::string& lanes, int quad_rows, int pairs, int segment) {
    const auto [n, k] = shape_nk(shape);
    if (!(1 <= nn && nn < mm && mm <= 256))
        throw py::value_error("n:m must satisfy 1 <= n < m <= 256, got " + std::to_string(nn) + ":" + std::to_string(mm));
    if (k % mm) throw py::value_error("m = " + std::to_string(mm) + " does not divide K = " + std::to_string(k));
    const int64_t count = k / mm * nn, meta_cols = (count * qrt::nm_meta_bits(mm) + 7) / 8;
    py::array meta = as_array_of<uint8_t>(meta_obj, "meta", "uint8");
    require_c_contiguous(meta, "meta");
    if (meta.ndim() != 2 || meta.shape(0) != n || meta.shape(1) != meta_cols)
        throw py::value_error("meta has shape " + shape_str(meta) + ", expected (" + std::to_string(n) + ", " +
                              std::to_string(meta_cols) + ")");
    py::array q = as_array_of<int8_t>(qdata_obj, "qdata", "int8");
    if (q.ndim() != 2 || q.shape(0) != n || q.shape(1) != count)
        throw py::value_error("qdata has shape " + shape_str(q) + ", expected (" + std::to_string(n) + ", " +
                              std::to_string(count) + ")");
    const int8_t* qp = qdata_ptr(q);
    const uint8_t* mp = static_cast<const uint8_t*>(meta.data());
    qrt::SparsePackOptions opt;
    opt.lanes = lanes_option(lanes);
    opt.quad_rows = quad_rows;
    opt.pairs = pairs;
    opt.segment = segment;
    return pack(n, scale_obj, opt, [&] { return qrt::sparse_rows_nm(n, k, nn, mm, mp, meta_cols, qp); });
}

// Y (M, N) float32 = sparse int8 Linear of X (M, K) float32 (sparse_gemm.h).
py::array sparse_linear_py(const qrt::SparseInt8Weight& w, const py::object& x_obj, const py::object& bias_obj,
                           const std::string& act_quant, double act_scale, int64_t act_zero_point,
                           const py::object& out_obj, const std::string& path_name, const std::string& activation) {
    const qrt::Activation act = qrt::bind::activation_arg(activation);
    const qrt::Int8ActQuant aq = qrt::bind::act_quant_arg(act_quant, act_scale, act_zero_point);
    const qrt::SparsePath path = path_option(path_name);
    py::array x = as_array_of<float>(x_obj, "X", "float32");
    if (x.ndim() != 2 || x.shape(1) != w.k)
        throw py::value_error("X has shape " + shape_str(x) + ", expected (M, " + std::to_string(w.k) + ") (K of the weight)");
    require_c_contiguous(x, "X");
    const int64_t m = x.shape(0);

    qrt::AlignedArray<double> bias;   // float64, padded to whole 16-row blocks (the kernel's contract)
    if (!bias_obj.is_none()) {
        py::array b = bias_array(bias_obj, w.n);
        bias.allocate(static_cast<size_t>(w.npad));
        copy_bias_f64(b, w.n, w.npad, bias.get());
    }
    py::array out = output_f32(out_obj, m, w.n);
    const qrt::Int8Isa isa = qrt::int8_current_isa();
    if (path != qrt::SparsePath::automatic && !qrt::sparse_path_available(w, path, isa))
        throw py::value_error(std::string("sparse path '") + path_name + "' is not available for this weight on '" +
                              qrt::int8_isa_name(isa) + "'");
    const float* xp = static_cast<const float*>(x.data());
    float* yp = static_cast<float*>(out.mutable_data());
    {
        py::gil_scoped_release release;   // the arrays stay referenced by this frame
        qrt::sparse_int8_linear_isa(w, xp, m, bias_obj.is_none() ? nullptr : bias.get(), aq, yp, path, isa,
                                    qrt::int8_get_threads(), act);
    }
    return out;
}

}  // namespace

void bind_sparse(py::module_& m) {
    py::class_<qrt::SparseInt8Weight>(
        m, "SparseInt8Weight",
        "A csr / bsr / nm int8 weight packed once for sparse_int8_linear: canonical rows (scalar path), ELL "
        "vectors over 16-row blocks x 64- or 128-byte segments (byte or dword lanes), and column quads of 1 or 4 rows "
        "(bsr with 4-column aligned blocks). Built by sparse_int8_csr / _bsr / _nm.")
        .def_property_readonly("n", [](const qrt::SparseInt8Weight& w) { return w.n; })
        .def_property_readonly("k", [](const qrt::SparseInt8Weight& w) { return w.k; })
        .def_property_readonly("nnz", [](const qrt::SparseInt8Weight& w) { return w.nnz; },
                               "stored values (explicit zeros included)")
        .def_property_readonly("lanes", [](const qrt::SparseInt8Weight& w) { return std::string(lanes_name(w.lanes)); },
                               "ELL lanes built: 'byte', 'dword' or 'none'")
        .def_property_readonly("ell_vectors", [](const qrt::SparseInt8Weight& w) { return w.ell_vectors; })
        .def_property_readonly("segment", [](const qrt::SparseInt8Weight& w) { return w.lanes == qrt::EllLanes::none || w.windows ? 0 : w.seg; },
                               "bytes of K per ELL segment (64 or 128); 0 for sliding windows (the segment option "
                               "0) and when no ELL was built")
        .def_property_readonly("windows", [](const qrt::SparseInt8Weight& w) { return w.windows; },
                               "byte lanes over sliding 64-byte windows (segment option 0) instead of fixed segments")
        .def_property_readonly("ell_no_min", [](const qrt::SparseInt8Weight& w) { return w.lanes != qrt::EllLanes::none && w.ell_no_min; },
                               "ELL built and no weight of it is -128: the AVX2 ELL kernel takes its signed step")
        .def_property_readonly("quad_rows", [](const qrt::SparseInt8Weight& w) { return w.quad_rows; },
                               "rows per quad group (1 or 4), 0 when no quads were built")
        .def_property_readonly("nquads", [](const qrt::SparseInt8Weight& w) { return w.nquads; })
        .def_property_readonly("quads_narrow", [](const qrt::SparseInt8Weight& w) { return w.quad_rows > 0 && w.quads_narrow; },
                               "quads built and every quad weight within [-63, 63]: the AVX2 quad tiles skip the sign step")
        .def_property_readonly("npairs", [](const qrt::SparseInt8Weight& w) { return w.has_pairs ? w.npairs : -1; },
                               "weight pairs of the pairs_avx2 path, -1 when they were not built")
        .def_property_readonly("pairs_col_x4", [](const qrt::SparseInt8Weight& w) { return w.has_pairs && w.pcol_x4(); },
                               "pairs built with 4 x column indices (K <= 16384: the kernel's loads scale them)")
        .def_property_readonly("nbytes", &qrt::SparseInt8Weight::nbytes, "bytes held by every packed array")
        .def_property_readonly(
            "kernel_nbytes",
            [](const qrt::SparseInt8Weight& w) {
                // what the vector path for M = 1 streams per call (weights side)
                const qrt::SparsePath p = qrt::sparse_choose_path(w, 1, qrt::int8_current_isa());
                if (p == qrt::SparsePath::ell || p == qrt::SparsePath::ell_avx2 ||
                    (p == qrt::SparsePath::scalar && !w.has_rows))
                    return static_cast<int64_t>(w.ell_idx.size + w.ell_val.size + w.sptr.size() * 8 + w.woff.size * 4);
                if (p == qrt::SparsePath::quad_tiles)
                    return static_cast<int64_t>(w.qw.size + w.qcol.size() * 2 + w.qptr.size() * 8);
                if (p == qrt::SparsePath::pairs_avx2)
                    return static_cast<int64_t>(w.npairs * 8 + w.pptr.size() * 8);
                return static_cast<int64_t>(w.nnz * 5 + w.rows.indptr.size() * 8);
            },
            "bytes of the packed weight the M = 1 path reads per call")
        .def("path", [](const qrt::SparseInt8Weight& w, int64_t rows) {
                return std::string(qrt::sparse_path_name(qrt::sparse_choose_path(w, rows, qrt::int8_current_isa())));
            },
            py::arg("m"), "The path sparse_int8_linear takes for M rows on the current ISA.")
        .def("__repr__", [](const qrt::SparseInt8Weight& w) {
            return "SparseInt8Weight(N=" + std::to_string(w.n) + ", K=" + std::to_string(w.k) + ", nnz=" +
                   std::to_string(w.nnz) + ", lanes=" + lanes_name(w.lanes) + ", segment=" +
                   (w.windows ? std::string("windows") : std::to_string(w.lanes == qrt::EllLanes::none ? 0 : w.seg)) + ", quad_rows=" +
                   std::to_string(w.quad_rows) + ")";
        });

    const char* opts_doc = " lanes: ELL lanes 'auto' (the denser of byte / dword), "
                           "'none', 'byte' (refused on CPUs with AVX-512 VNNI but no VBMI), 'dword'; quad_rows: -1 "
                           "auto (bsr with C % 4 == 0: 4 if R % 4 == 0 else 1), 0 none, 1 or 4 (N % 4 == 0); pairs: -1 "
                           "auto (built where the current int8 path is avx2), 0 no, 1 yes (the pairs_avx2 path's); "
                           "segment: byte lanes' segment bytes, -1 auto (sparse_byte_segment()), 0 (sliding 64-byte windows), 64 or 128.";
    m.def("sparse_int8_csr", &make_csr, py::arg("indptr"), py::arg("indices"), py::arg("qdata"), py::arg("scale"),
          py::arg("shape"), py::arg("lanes") = "auto", py::arg("quad_rows") = -1, py::arg("pairs") = -1, py::arg("segment") = -1,
          (std::string("csr int8 weight: indptr (N+1,) int32/int64, indices (nnz,) uint8/uint16/int32/int64, qdata "
                       "(nnz,) int8, scale (N,) float32, shape (N, K).") + opts_doc).c_str());
    m.def("sparse_int8_bsr", &make_bsr, py::arg("indptr"), py::arg("indices"), py::arg("qdata"), py::arg("scale"),
          py::arg("shape"), py::arg("lanes") = "auto", py::arg("quad_rows") = -1, py::arg("pairs") = -1, py::arg("segment") = -1,
          (std::string("bsr int8 weight: indptr (N/R+1,), indices (nb,) block columns, qdata (nb, R, C) int8, scale "
                       "(N,) float32, shape (N, K).") + opts_doc).c_str());
    m.def("sparse_int8_nm", &make_nm, py::arg("meta"), py::arg("qdata"), py::arg("scale"), py::arg("shape"),
          py::arg("n"), py::arg("m"), py::arg("lanes") = "auto", py::arg("quad_rows") = -1, py::arg("pairs") = -1, py::arg("segment") = -1,
          (std::string("n:m int8 weight: meta (N, ceil(K/m*n*b/8)) uint8, qdata (N, K/m*n) int8, scale (N,) float32, "
                       "shape (N, K).") + opts_doc).c_str());
    m.def("sparse_int8_linear", &sparse_linear_py, py::arg("weight"), py::arg("x"), py::arg("bias") = py::none(),
          py::arg("act_quant") = "dynamic", py::arg("act_scale") = 1.0, py::arg("act_zero_point") = 0,
          py::arg("out") = py::none(), py::arg("path") = "auto", py::arg("activation") = "none",
          "Y (M, N) float32 = act(float32(((s_w * acc) * s_x) + bias)), acc the exact integer product of the quantized X "
          "(M, K) float32 C-contiguous and the sparse weight; act_quant 'dynamic' or 'static' (act_scale, "
          "act_zero_point); bias (N,) float32/float64 or None; out (M, N) float32 or None; path 'auto', 'scalar', "
          "'ell', 'quad_tiles' (AVX-512 VNNI), 'ell_avx2' (AVX2) (forced, for tests); activation 'none', 'relu', "
          "'gelu' or 'gelu_tanh' (apply_activation's bits). Bit-exact with kernels/reference/packed.py (then the "
          "activation).");
    m.def("sparse_has_vbmi", &qrt::sparse_has_vbmi, "Whether the CPU has AVX-512 VBMI (byte-lane ELL).");
    m.def("sparse_byte_segment", &qrt::sparse_byte_segment,
          "The segment option byte-lane ELL is built with by default, for the current int8 path: 64 (bytes of K) "
          "or 0 (sliding 64-byte windows) (csrc/sparse_gemm.h).");
    m.def("sparse_segment_tolerance", &qrt::sparse_segment_tolerance, py::arg("wide_vectors"),
          "On AVX-512 paths where sparse_byte_segment() is 64: the most vectors (as a multiple of the 128-byte "
          "form's wide_vectors) a weight's 64-byte byte-lane form may need and still be built over 64, else "
          "sliding windows (csrc/sparse_gemm.h).");
    m.def("sparse_permute_probe", &qrt::sparse_permute_probe,
          "(vpermi2b, vpermb) nanoseconds per (permute, vpdpbusd) pair, best of 5 short loops; (0, 0) without "
          "AVX-512 VBMI + VNNI.");
}
