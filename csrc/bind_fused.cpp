// pybind11 bindings of the fused BERT ops (attention.h, layer_norm.h), added to the one module
// by bindings.cpp's call of bind_fused(m).
//
// Every argument is checked here (type, dtype, shape, strides, alignment, scalars): a wrong
// call is a TypeError / ValueError, never a crash. q, k and v may be strided views (e.g. the
// Split of a merged QKV projection): they are read in place, not copied; only their last axis
// must be contiguous. The GIL is released around the kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attention.h"
#include "int8_gemm.h"      // int8_get_threads: the native kernels' one thread count
#include "layer_norm.h"
#include "bind_checks.h"

namespace py = pybind11;

namespace {

using qrt::bind::as_array_of;
using qrt::bind::shape_str;

py::array as_f32(const py::handle& obj, const char* what) {
    py::array a = as_array_of<float>(obj, what, "float32");
    if (reinterpret_cast<uintptr_t>(a.data()) % alignof(float) != 0)
        throw py::value_error(std::string(what) + " is not aligned to float32 (np.ascontiguousarray)");
    return a;
}

void require_c_contiguous(const py::array& a, const char* what) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous (np.ascontiguousarray), got strides that are not");
}

// stride of axis `ax` in elements (0 where the axis has size 1: it is never stepped along)
int64_t elem_stride(const py::array& a, py::ssize_t ax, const char* what) {
    if (a.shape(ax) == 1) return 0;
    const py::ssize_t s = a.strides(ax);
    if (s % static_cast<py::ssize_t>(sizeof(float)) != 0)
        throw py::value_error(std::string(what) + " has a stride of " + std::to_string(s) + " bytes on axis " +
                              std::to_string(ax) + ", expected a multiple of 4");
    return static_cast<int64_t>(s / static_cast<py::ssize_t>(sizeof(float)));
}

constexpr qrt::FusedIsa kAllIsas[] = {qrt::FusedIsa::avx512, qrt::FusedIsa::avx2, qrt::FusedIsa::scalar};

// "auto": fused_auto_isa, which follows a forced int8 path (QRT_NATIVE_ISA / set_int8_isa)
qrt::FusedIsa isa_from_name(const std::string& name) {
    if (name == "auto") return qrt::fused_auto_isa();
    for (qrt::FusedIsa isa : kAllIsas) {
        if (name == qrt::fused_isa_name(isa)) {
            if (!qrt::fused_isa_supported(isa))
                throw py::value_error("fused path '" + name + "' is not supported by this CPU (best here: " +
                                      qrt::fused_isa_name(qrt::fused_best_isa()) + ")");
            return isa;
        }
    }
    throw py::value_error("unknown fused path '" + name + "'; expected one of auto, avx512, avx2, scalar");
}

py::array attention_py(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                       const py::object& mask_obj, int64_t head_dim, double scale, const std::string& isa_name,
                       bool nan_to_zero) {
    const qrt::FusedIsa isa = isa_from_name(isa_name);
    py::array q = as_f32(q_obj, "q"), k = as_f32(k_obj, "k"), v = as_f32(v_obj, "v");
    if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3)
        throw py::value_error("q, k, v must be (B, S, H*D), got " + shape_str(q) + ", " + shape_str(k) + ", " + shape_str(v));
    if (head_dim < 1) throw py::value_error("head_dim must be >= 1, got " + std::to_string(head_dim));
    if (!std::isfinite(scale)) throw py::value_error("scale must be finite, got " + std::to_string(scale));
    const int64_t b = q.shape(0), sq = q.shape(1), qd = q.shape(2), sk = k.shape(1);
    const int64_t h = qd / head_dim;
    if (qd % head_dim != 0 || k.shape(0) != b || k.shape(2) != qd || v.shape(0) != b || v.shape(1) != sk ||
        (h > 0 && v.shape(2) % h != 0) || (h == 0 && v.shape(2) != 0))
        throw py::value_error("q " + shape_str(q) + ", k " + shape_str(k) + ", v " + shape_str(v) +
                              " do not match with head_dim " + std::to_string(head_dim) +
                              " (need q (B, Sq, H*D), k (B, Sk, H*D), v (B, Sk, H*Dv))");
    const int64_t dv = h > 0 ? v.shape(2) / h : 0;
    qrt::AttentionArgs a;
    a.batch = b, a.sq = sq, a.sk = sk, a.heads = h, a.head_dim = head_dim, a.v_head_dim = dv;
    a.scale = static_cast<float>(scale);
    a.nan_to_zero = nan_to_zero;
    const py::array* qkv[3] = {&q, &k, &v};
    const char* names[3] = {"q", "k", "v"};
    int64_t* strides[3] = {a.q_strides, a.k_strides, a.v_strides};
    for (int t = 0; t < 3; ++t) {
        const py::array& x = *qkv[t];
        if (x.size() == 0) continue;      // never read (empty result, or Sk = 0: zeros)
        if (x.shape(2) > 1 && x.strides(2) != static_cast<py::ssize_t>(sizeof(float)))
            throw py::value_error(std::string(names[t]) + " must be contiguous along its last axis (stride 4 bytes), got " +
                                  std::to_string(x.strides(2)));
        strides[t][0] = elem_stride(x, 0, names[t]);
        strides[t][1] = elem_stride(x, 1, names[t]);
    }
    py::array mask;
    if (!mask_obj.is_none()) {
        mask = as_f32(mask_obj, "mask");
        const int64_t full[4] = {b, h, sq, sk};
        bool ok = mask.ndim() <= 4;
        for (py::ssize_t ax = 0; ok && ax < mask.ndim(); ++ax) {
            const int64_t n = mask.shape(ax), want = full[4 - mask.ndim() + ax];
            ok = n == 1 || n == want;
        }
        if (!ok)
            throw py::value_error("mask " + shape_str(mask) + " does not broadcast to (B, H, Sq, Sk) = (" +
                                  std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(sq) + ", " +
                                  std::to_string(sk) + ")");
        for (py::ssize_t ax = 0; ax < mask.ndim() && mask.size() > 0; ++ax)
            a.mask_strides[4 - mask.ndim() + ax] = elem_stride(mask, ax, "mask");
        a.mask = static_cast<const float*>(mask.data());
    }
    py::array_t<float> y({b, sq, h * dv});
    if (y.size() == 0) return y;
    if (sk == 0) {       // softmax over no positions: the reference's empty product, zeros
        std::fill(y.mutable_data(), y.mutable_data() + y.size(), 0.0f);
        return y;
    }
    a.q = static_cast<const float*>(q.data());
    a.k = static_cast<const float*>(k.data());
    a.v = static_cast<const float*>(v.data());
    a.y = y.mutable_data();
    {
        py::gil_scoped_release release;   // the arrays stay referenced by this frame
        qrt::attention_f32(a, isa, qrt::int8_get_threads());
    }
    return y;
}

py::array skip_layer_norm_py(const py::object& x_obj, const py::object& skip_obj, const py::object& scale_obj,
                             const py::object& bias_obj, double epsilon, const std::string& isa_name) {
    const qrt::FusedIsa isa = isa_from_name(isa_name);
    py::array x = as_f32(x_obj, "x"), skip = as_f32(skip_obj, "skip"), scale = as_f32(scale_obj, "scale");
    require_c_contiguous(x, "x");
    require_c_contiguous(skip, "skip");
    require_c_contiguous(scale, "scale");
    if (x.ndim() < 1 || x.shape(x.ndim() - 1) < 1)
        throw py::value_error("x has shape " + shape_str(x) + ", expected (..., D) with D >= 1");
    bool same = skip.ndim() == x.ndim();
    for (py::ssize_t ax = 0; same && ax < x.ndim(); ++ax) same = skip.shape(ax) == x.shape(ax);
    if (!same) throw py::value_error("skip has shape " + shape_str(skip) + ", expected x's " + shape_str(x));
    const int64_t d = x.shape(x.ndim() - 1);
    if (scale.ndim() != 1 || scale.shape(0) != d)
        throw py::value_error("scale has shape " + shape_str(scale) + ", expected (" + std::to_string(d) + ",)");
    py::array bias;
    const float* bp = nullptr;
    if (!bias_obj.is_none()) {
        bias = as_f32(bias_obj, "bias");
        require_c_contiguous(bias, "bias");
        if (bias.ndim() != 1 || bias.shape(0) != d)
            throw py::value_error("bias has shape " + shape_str(bias) + ", expected (" + std::to_string(d) + ",) or None");
        bp = static_cast<const float*>(bias.data());
    }
    if (!(std::isfinite(epsilon) && epsilon >= 0))
        throw py::value_error("epsilon must be finite and >= 0, got " + std::to_string(epsilon));
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    py::array_t<float> y(shape);
    const int64_t rows = d > 0 ? static_cast<int64_t>(x.size()) / d : 0;
    if (rows == 0) return y;
    const float* xp = static_cast<const float*>(x.data());
    const float* sp = static_cast<const float*>(skip.data());
    const float* gp = static_cast<const float*>(scale.data());
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::skip_layer_norm_f32(xp, sp, gp, bp, epsilon, yp, rows, d, isa, qrt::int8_get_threads());
    }
    return y;
}

py::array exp_py(const py::object& x_obj, const std::string& isa_name) {
    const qrt::FusedIsa isa = isa_from_name(isa_name);
    py::array x = as_f32(x_obj, "x");
    require_c_contiguous(x, "x");
    if (x.ndim() != 1) throw py::value_error("x has shape " + shape_str(x) + ", expected (N,)");
    py::array_t<float> y(x.shape(0));
    qrt::exp_f32(static_cast<const float*>(x.data()), y.mutable_data(), x.shape(0), isa);
    return y;
}

}  // namespace

void bind_fused(py::module_& m) {
    m.def("attention", &attention_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask") = py::none(),
          py::arg("head_dim"), py::arg("scale"), py::arg("isa") = "auto", py::arg("nan_to_zero") = false,
          "Y (B, Sq, H*Dv) float32 = softmax(scale * Q K^T + mask) V per head (csrc/attention.h): q (B, Sq, H*D), "
          "k (B, Sk, H*D), v (B, Sk, H*Dv) float32, any batch/sequence strides, last axis contiguous; mask None or "
          "float32 broadcastable to (B, H, Sq, Sk) (any strides). isa 'auto', 'avx512', 'avx2' or 'scalar'. "
          "nan_to_zero: a query row whose softmax is NaN (scores all -inf, or a NaN / +inf score) gives zeros.");
    m.def("skip_layer_norm", &skip_layer_norm_py, py::arg("x"), py::arg("skip"), py::arg("scale"),
          py::arg("bias") = py::none(), py::arg("epsilon") = 1e-5, py::arg("isa") = "auto",
          "LayerNorm over the last axis of float32(x + skip) (csrc/layer_norm.h): x, skip (..., D) float32 "
          "C-contiguous of one shape, scale and bias (D,) float32 (bias may be None); float64 statistics. "
          "isa 'auto', 'avx512', 'avx2' or 'scalar'.");
    m.def("exp32", &exp_py, py::arg("x"), py::arg("isa") = "auto",
          "exp of float32 x (N,) for x <= 0, as the attention softmax computes it (for tests). "
          "isa 'auto', 'avx512', 'avx2' or 'scalar'.");
    m.def("fused_isas", []() {
            py::list out;
            for (auto isa : kAllIsas)
                if (qrt::fused_isa_supported(isa)) out.append(qrt::fused_isa_name(isa));
            return out;
        },
        "The code paths of attention / skip_layer_norm / exp32 this CPU can run, fastest first.");
    m.def("fused_isa", []() { return std::string(qrt::fused_isa_name(qrt::fused_auto_isa())); },
          "The path isa='auto' takes now: the best of fused_isas(), no wider than the int8 path when one is "
          "forced (QRT_NATIVE_ISA / set_int8_isa).");
}
