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

// Disentangled attention's relative-position inputs (attention.h); None: that term is absent.
struct RelInputs {
    py::handle pos_key, c2p, pos_query, p2c;
};

// One term's table, a PositionTable or an (H, P, D) float32 C-contiguous array (transposed here
// for this call), and its index (rows, cols) int64 C-contiguous (leading axes of size 1 allowed)
// with every value in [0, P), checked; arrays and tables made here are kept alive in `keep`.
void rel_term_arg(const py::handle& table_obj, const py::handle& idx_obj, const char* table_name,
                  const char* idx_name, int64_t heads, int64_t head_dim, int64_t rows, int64_t cols,
                  std::vector<py::object>& keep, const qrt::PositionTable** table, const int64_t** idx) {
    if (table_obj.is_none() != idx_obj.is_none())
        throw py::value_error(std::string(table_name) + " and " + idx_name + " must be given together");
    if (table_obj.is_none()) return;
    py::object holder;
    if (py::isinstance<qrt::PositionTable>(table_obj)) {
        holder = py::reinterpret_borrow<py::object>(table_obj);
    } else {
        py::array t = as_f32(table_obj, table_name);
        require_c_contiguous(t, table_name);
        if (t.ndim() != 3 || t.shape(1) < 1)
            throw py::value_error(std::string(table_name) + " has shape " + shape_str(t) + ", expected (H, P, D) = (" +
                                  std::to_string(heads) + ", P >= 1, " + std::to_string(head_dim) + ")");
        holder = py::cast(qrt::PositionTable(static_cast<const float*>(t.data()), t.shape(0), t.shape(1), t.shape(2)));
    }
    const auto& pt = holder.cast<const qrt::PositionTable&>();
    if (pt.heads != heads || pt.head_dim != head_dim)
        throw py::value_error(std::string(table_name) + " has shape (" + std::to_string(pt.heads) + ", " +
                              std::to_string(pt.positions) + ", " + std::to_string(pt.head_dim) +
                              "), expected (H, P, D) = (" + std::to_string(heads) + ", P >= 1, " +
                              std::to_string(head_dim) + ")");
    py::array ix = qrt::bind::contiguous_array_of<int64_t>(idx_obj, idx_name, "int64");
    bool ok = ix.ndim() >= 2 && ix.shape(ix.ndim() - 2) == rows && ix.shape(ix.ndim() - 1) == cols;
    for (py::ssize_t ax = 0; ok && ax + 2 < ix.ndim(); ++ax) ok = ix.shape(ax) == 1;
    if (!ok)
        throw py::value_error(std::string(idx_name) + " has shape " + shape_str(ix) + ", expected (" +
                              std::to_string(rows) + ", " + std::to_string(cols) + ") (leading axes of size 1 allowed)");
    const int64_t p = pt.positions;
    const int64_t* v = static_cast<const int64_t*>(ix.data());
    for (int64_t e = 0; e < rows * cols; ++e)
        if (v[e] < 0 || v[e] >= p)
            throw py::value_error(std::string(idx_name) + " holds " + std::to_string(v[e]) + " at flat position " +
                                  std::to_string(e) + ", outside [0, " + std::to_string(p) + ") (the rows of " +
                                  table_name + ")");
    *table = &pt;
    *idx = v;
    keep.push_back(holder);
    keep.push_back(ix);
}

// attention on `threads` threads of `isa` (every argument checked: attention_py's contract);
// rel: disentangled attention's terms, or nullptr
py::array attention_run(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj,
                        const py::handle& mask_obj, int64_t head_dim, double scale, qrt::FusedIsa isa,
                        bool nan_to_zero, int threads, const RelInputs* rel = nullptr) {
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
    std::vector<py::object> keep;   // the relative-position tables and indices, referenced while the kernel runs
    if (rel != nullptr) {
        rel_term_arg(rel->pos_key, rel->c2p, "pos_key", "c2p_index", h, head_dim, sq, sk, keep, &a.pos_key, &a.c2p);
        rel_term_arg(rel->pos_query, rel->p2c, "pos_query", "p2c_index", h, head_dim, sk, sq, keep, &a.pos_query,
                     &a.p2c);
    }
    py::array_t<float> y = qrt::bind::new_f32({b, sq, h * dv});   // output_cache.h
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
        qrt::attention_f32(a, isa, threads);
    }
    return y;
}

py::array attention_py(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                       const py::object& mask_obj, int64_t head_dim, double scale, const std::string& isa_name,
                       bool nan_to_zero) {
    return attention_run(q_obj, k_obj, v_obj, mask_obj, head_dim, scale, isa_from_name(isa_name), nan_to_zero,
                         qrt::int8_get_threads());
}

// skip_layer_norm on `threads` threads of `isa` (every argument checked: skip_layer_norm_py's contract)
py::array skip_layer_norm_run(const py::handle& x_obj, const py::handle& skip_obj, const py::handle& scale_obj,
                              const py::handle& bias_obj, double epsilon, qrt::FusedIsa isa, int threads) {
    // skip None: LayerNormalization of x alone (layer_norm.h)
    py::array x = as_f32(x_obj, "x"), scale = as_f32(scale_obj, "scale");
    py::array skip = skip_obj.is_none() ? x : as_f32(skip_obj, "skip");
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
    py::array_t<float> y = qrt::bind::new_f32(shape);   // output_cache.h
    const int64_t rows = d > 0 ? static_cast<int64_t>(x.size()) / d : 0;
    if (rows == 0) return y;
    const float* xp = static_cast<const float*>(x.data());
    const float* sp = skip_obj.is_none() ? nullptr : static_cast<const float*>(skip.data());
    const float* gp = static_cast<const float*>(scale.data());
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::skip_layer_norm_f32(xp, sp, gp, bp, epsilon, yp, rows, d, isa, threads);
    }
    return y;
}

py::array skip_layer_norm_py(const py::object& x_obj, const py::object& skip_obj, const py::object& scale_obj,
                             const py::object& bias_obj, double epsilon, const std::string& isa_name) {
    return skip_layer_norm_run(x_obj, skip_obj, scale_obj, bias_obj, epsilon, isa_from_name(isa_name),
                               qrt::int8_get_threads());
}

py::array disentangled_attention_py(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                                    const py::object& mask_obj, const py::object& pos_key, const py::object& c2p,
                                    const py::object& pos_query, const py::object& p2c, int64_t head_dim, double scale,
                                    const std::string& isa_name) {
    const RelInputs rel{pos_key, c2p, pos_query, p2c};
    return attention_run(q_obj, k_obj, v_obj, mask_obj, head_dim, scale, isa_from_name(isa_name), false,
                         qrt::int8_get_threads(), &rel);
}

// --- session steps bound in C++ -----------------------------------------------------------------
//
// As LinearCall (bind_linear_call.cpp): a session step's run as one C++ callable, the
// attributes bound at plan time, so that the common call (float32 arrays the kernel takes as
// they are) skips the Python between the session and the binding (about 1.7 us a step:
// all-MiniLM-L6-v2 has 13 SkipLayerNormalizations and 6 Attentions). Any other call goes to
// `general`, the Python run of kernels/fused_dispatch.py, which handles it (broadcasting,
// other dtypes, copies) or raises the error. `one_thread` is kernels/blas_activity.py's
// blas_recently_called: true, the kernel stays on the calling thread (why: that module).

class FusedStep : public qrt::bind::BoundStep {
public:
    FusedStep(py::object general, py::object one_thread)
        : BoundStep(std::move(general)), one_thread_(std::move(one_thread)) {
        if (!PyCallable_Check(one_thread_.ptr())) throw py::type_error("one_thread must be callable");
    }

protected:
    int threads() const { return one_thread_().cast<bool>() ? 1 : qrt::int8_get_threads(); }

private:
    py::object one_thread_;
};

class AttentionStep : public FusedStep {
public:
    AttentionStep(int64_t head_dim, double scale, bool nan_to_zero, py::object general, py::object one_thread)
        : FusedStep(std::move(general), std::move(one_thread)), head_dim_(head_dim), scale_(scale),
          nan_to_zero_(nan_to_zero) {}

    // (q, k, v, mask=None) -> (Y,): q, k, v float32 with a contiguous last axis (strided views
    // of a merged QKV projection are read in place), mask None or float32
    py::object call(const py::args& args, const py::kwargs& kwargs) const {
        const size_t na = args.size();
        if (kwargs.empty() && (na == 3 || na == 4)) {
            const py::handle mask = na == 4 ? args[3] : py::handle(Py_None);
            bool fast = mask.is_none() || qrt::bind::is_array_of<float>(mask);
            for (size_t i = 0; fast && i < 3; ++i)
                fast = qrt::bind::is_array_of<float>(args[i]) && last_axis_contiguous(args[i]);
            if (fast)
                return py::make_tuple(attention_run(args[0], args[1], args[2], mask, head_dim_, scale_,
                                                    qrt::fused_auto_isa(), nan_to_zero_, threads()));
        }
        return fallback(args, kwargs);
    }

private:
    static bool last_axis_contiguous(py::handle h) {
        const auto a = py::reinterpret_borrow<py::array>(h);
        return a.ndim() >= 1 && (a.shape(a.ndim() - 1) <= 1 || a.strides(a.ndim() - 1) == static_cast<py::ssize_t>(sizeof(float)));
    }
    int64_t head_dim_;
    double scale_;
    bool nan_to_zero_;
};

class SkipLayerNormStep : public FusedStep {
public:
    SkipLayerNormStep(double epsilon, py::object general, py::object one_thread)
        : FusedStep(std::move(general), std::move(one_thread)), epsilon_(epsilon) {}

    // (x, skip, scale, bias=None) -> (Y,): x and skip float32 C-contiguous of one shape (..., D),
    // D >= 1, scale and bias (D,) float32 C-contiguous
    py::object call(const py::args& args, const py::kwargs& kwargs) const {
        const size_t na = args.size();
        if (kwargs.empty() && (na == 3 || na == 4)) {
            const py::handle bias = na == 4 ? args[3] : py::handle(Py_None);
            if (fast(args[0], args[1], args[2], bias))
                return py::make_tuple(skip_layer_norm_run(args[0], args[1], args[2], bias, epsilon_, qrt::fused_auto_isa(),
                                                          threads()));
        }
        return fallback(args, kwargs);
    }

private:
    static bool c_f32(py::handle h) {
        return qrt::bind::is_array_of<float>(h) && (py::reinterpret_borrow<py::array>(h).flags() & py::array::c_style);
    }
    static bool fast(py::handle x_h, py::handle skip_h, py::handle scale_h, py::handle bias_h) {
        if (!(c_f32(x_h) && c_f32(skip_h) && c_f32(scale_h) && (bias_h.is_none() || c_f32(bias_h)))) return false;
        const auto x = py::reinterpret_borrow<py::array>(x_h), skip = py::reinterpret_borrow<py::array>(skip_h);
        if (x.ndim() < 1 || skip.ndim() != x.ndim()) return false;
        for (py::ssize_t ax = 0; ax < x.ndim(); ++ax)
            if (skip.shape(ax) != x.shape(ax)) return false;
        const py::ssize_t d = x.shape(x.ndim() - 1);
        const auto vec = [d](py::handle h) {
            const auto a = py::reinterpret_borrow<py::array>(h);
            return a.ndim() == 1 && a.shape(0) == d;
        };
        return d >= 1 && vec(scale_h) && (bias_h.is_none() || vec(bias_h));
    }
    double epsilon_;
};

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
    py::class_<qrt::PositionTable>(
        m, "PositionTable",
        "A disentangled-attention position table (H, P, D) float32, transposed once for the kernel (csrc/attention.h); "
        "pass it to disentangled_attention instead of the array to skip the per-call transpose.")
        .def(py::init([](const py::object& table) {
                 py::array t = as_f32(table, "table");
                 require_c_contiguous(t, "table");
                 if (t.ndim() != 3 || t.shape(0) < 1 || t.shape(1) < 1 || t.shape(2) < 1)
                     throw py::value_error("table has shape " + shape_str(t) + ", expected (H, P, D), each >= 1");
                 return qrt::PositionTable(static_cast<const float*>(t.data()), t.shape(0), t.shape(1), t.shape(2));
             }),
             py::arg("table"))
        .def_property_readonly("shape", [](const qrt::PositionTable& p) {
            return py::make_tuple(p.heads, p.positions, p.head_dim);
        });
    m.def("disentangled_attention", &disentangled_attention_py, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("mask"), py::arg("pos_key"), py::arg("c2p_index"), py::arg("pos_query"), py::arg("p2c_index"),
          py::arg("head_dim"), py::arg("scale"), py::arg("isa") = "auto",
          "DeBERTa's disentangled attention (csrc/attention.h): attention() with S[i, j] += q_i . pos_key[h, "
          "c2p_index[i, j]] + k_j . pos_query[h, p2c_index[j, i]] before the scale. pos_key / pos_query a "
          "PositionTable, an (H, P, D) float32 C-contiguous array or None, c2p_index (Sq, Sk) / p2c_index (Sk, Sq) int64 C-contiguous (leading axes of "
          "size 1 allowed) with values in [0, P), None with their table.");
    m.def("skip_layer_norm", &skip_layer_norm_py, py::arg("x"), py::arg("skip"), py::arg("scale"),
          py::arg("bias") = py::none(), py::arg("epsilon") = 1e-5, py::arg("isa") = "auto",
          "LayerNorm over the last axis of float32(x + skip) (csrc/layer_norm.h): x, skip (..., D) float32 "
          "C-contiguous of one shape (skip None: of x alone), scale and bias (D,) float32 (bias may be None); float64 statistics. "
          "isa 'auto', 'avx512', 'avx2' or 'scalar'.");
    py::class_<AttentionStep>(m, "AttentionStep",
                              "An Attention session step bound once: call(q, k, v, mask=None) -> (Y,), attention() on "
                              "float32 q, k, v (last axis contiguous) and mask; other calls go to `general`.")
        .def(py::init<int64_t, double, bool, py::object, py::object>(), py::arg("head_dim"), py::arg("scale"),
             py::arg("nan_to_zero"), py::arg("general"), py::arg("one_thread"),
             "general: the run for other calls; one_thread: () -> bool, true keeps the kernel on the calling thread.")
        .def("__call__", &AttentionStep::call);
    py::class_<SkipLayerNormStep>(m, "SkipLayerNormStep",
                                  "A SkipLayerNormalization session step bound once: call(x, skip, scale, bias=None) -> "
                                  "(Y,), skip_layer_norm() on float32 C-contiguous x, skip of one shape and (D,) scale, "
                                  "bias; other calls go to `general`.")
        .def(py::init<double, py::object, py::object>(), py::arg("epsilon"), py::arg("general"), py::arg("one_thread"),
             "general: the run for other calls; one_thread: () -> bool, true keeps the kernel on the calling thread.")
        .def("__call__", &SkipLayerNormStep::call);
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
