// pybind11 bindings of the kernels CNNs need besides the GEMMs: the int8 Conv (int8_conv.h) and its
// 1 x 1 kernel (int8_pointwise_conv.h),
// the float32 depthwise Conv (depthwise_conv.h), the float32 channel product (f32_channel_gemm.h), the float32 Conv's im2col (im2col.h), MaxPool
// (max_pool.h), HardSigmoid / HardSwish (hard_sigmoid.h), Sigmoid (sigmoid.h), float32 Add / Sub / Mul / Div and
// ReduceMean (elementwise_f32.h), added to the one module by bindings.cpp's call of bind_cnn(m). Every
// argument is checked here: a wrong call is a TypeError / ValueError naming it, never a crash.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bind_checks.h"
#include "depthwise_conv.h"
#include "elementwise_f32.h"
#include "f32_channel_gemm.h"
#include "hard_sigmoid.h"
#include "sigmoid.h"
#include "im2col.h"
#include "int8_conv.h"
#include "int8_gemm.h"
#include "int8_pointwise_conv.h"
#include "max_pool.h"

namespace py = pybind11;

namespace {

using qrt::bind::contiguous_array_of;
using qrt::bind::shape_str;

std::vector<int64_t> ints(const py::sequence& s, size_t count, const char* what) {
    if (s.size() != count)
        throw py::value_error(std::string(what) + " must have " + std::to_string(count) + " entries, got " +
                              std::to_string(s.size()));
    std::vector<int64_t> v;
    for (const py::handle& e : s) v.push_back(e.cast<int64_t>());
    return v;
}

// The float32 Convs' bias: None (nullptr) or (m,) float32 C-contiguous (its data, the array held
// in `keep`), else TypeError / ValueError.
const float* f32_bias_arg(const py::object& bias_obj, int64_t m, py::array& keep) {
    if (bias_obj.is_none()) return nullptr;
    keep = contiguous_array_of<float>(bias_obj, "bias", "float32");
    if (keep.ndim() != 1 || keep.shape(0) != m)
        throw py::value_error("bias has shape " + shape_str(keep) + ", expected (" + std::to_string(m) + ",)");
    return static_cast<const float*>(keep.data());
}

// A new Y (N, M, OH, OW) float32 for geometry g
py::array_t<float> nchw_output(const qrt::ConvGeometry& g) {
    return qrt::bind::new_f32({static_cast<py::ssize_t>(g.n), static_cast<py::ssize_t>(g.m),
                               static_cast<py::ssize_t>(g.oh()), static_cast<py::ssize_t>(g.ow())});
}

// The activation argument of the Convs: float_epilogue.h's names, else a ValueError.
qrt::FloatEpilogue float_epilogue_arg(const std::string& name) {
    try {
        return qrt::float_epilogue_from_name(name);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

// Y (N, M, OH, OW) float32 = int8 Conv of X (N, C, H, W) float32 (int8_conv.h).
// X (N, C, H, W) float32 C-contiguous, else TypeError / ValueError.
py::array nchw_input(const py::object& x_obj) {
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    if (x.ndim() != 4) throw py::value_error("X has shape " + shape_str(x) + ", expected (N, C, H, W)");
    return x;
}

// The geometry of a Conv over X with window (kh, kw), M outputs and `group` groups; strides
// (sh, sw), pads (top, left, bottom, right), dilations (dh, dw) from their sequences; checked by
// conv_check_geometry (a ValueError naming the first bad value).
qrt::ConvGeometry conv_geometry(const py::array& x, int64_t kh, int64_t kw, const py::sequence& strides,
                                const py::sequence& pads, const py::sequence& dilations, int64_t m, int64_t group) {
    const std::vector<int64_t> s = ints(strides, 2, "strides"), p = ints(pads, 4, "pads (top, left, bottom, right)"),
                               d = ints(dilations, 2, "dilations");
    qrt::ConvGeometry g;
    g.n = x.shape(0), g.c = x.shape(1), g.h = x.shape(2), g.w = x.shape(3), g.m = m, g.group = group;
    g.kh = kh, g.kw = kw, g.sh = s[0], g.sw = s[1], g.dh = d[0], g.dw = d[1];
    g.pt = p[0], g.pl = p[1], g.pb = p[2], g.pr = p[3];
    try {
        qrt::conv_check_geometry(g);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    return g;
}

// The weights argument: a list or tuple of Int8Weight, one per group (at most kMaxGroups: a
// longer sequence is refused before anything is allocated for it).
constexpr size_t kMaxGroups = size_t(1) << 20;
std::vector<const qrt::Int8PackedWeight*> weight_list(const py::object& obj) {
    if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
        throw py::type_error("weights: expected a list of Int8Weight (one per group), got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    const py::sequence seq = obj;
    if (seq.size() == 0) throw py::value_error("weights: expected one Int8Weight per group, got none");
    if (seq.size() > kMaxGroups) throw py::value_error("weights: more than 2^20 groups");
    std::vector<const qrt::Int8PackedWeight*> out;
    for (const py::handle& e : seq) {
        if (!py::isinstance<qrt::Int8PackedWeight>(e))
            throw py::type_error("weights: expected Int8Weight entries, got " +
                                 py::str(py::type::of(e).attr("__name__")).cast<std::string>());
        out.push_back(e.cast<const qrt::Int8PackedWeight*>());
    }
    return out;
}

py::array int8_conv2d_py(const py::object& weights_obj, const py::object& x_obj,
                         const py::sequence& kernel, const py::sequence& strides, const py::sequence& pads,
                         const py::sequence& dilations, const py::object& bias_obj, const std::string& act_quant,
                         double act_scale, int64_t act_zero_point, const std::string& activation) {
    const qrt::FloatEpilogue ep = float_epilogue_arg(activation);
    const qrt::Int8ActQuant aq = qrt::bind::act_quant_arg(act_quant, act_scale, act_zero_point);
    const std::vector<const qrt::Int8PackedWeight*> weights = weight_list(weights_obj);
    py::array x = nchw_input(x_obj);
    const std::vector<int64_t> k = ints(kernel, 2, "kernel");
    const int64_t group = static_cast<int64_t>(weights.size());
    const qrt::ConvGeometry g = conv_geometry(x, k[0], k[1], strides, pads, dilations, group * weights[0]->n, group);
    const int64_t kk = g.kh * g.kw * (g.c / g.group);
    for (const qrt::Int8PackedWeight* w : weights)
        if (w->n != weights[0]->n || w->k != kk)
            throw py::value_error("weights: each group's weight must be (M/group, kh * kw * C/group) = (" +
                                  std::to_string(weights[0]->n) + ", " + std::to_string(kk) + "), got (" +
                                  std::to_string(w->n) + ", " + std::to_string(w->k) + ")");
    std::vector<double> bias;
    if (!bias_obj.is_none()) {
        py::array b = qrt::bind::bias_array(bias_obj, g.m);
        bias.resize(static_cast<size_t>(g.m));
        qrt::bind::copy_bias_f64(b, g.m, g.m, bias.data());
    }
    py::array_t<float> out = nchw_output(g);
    py::array_t<float> scratch = qrt::bind::new_f32({static_cast<py::ssize_t>(qrt::int8_conv2d_scratch_floats(g))});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::int8_conv2d(weights, g, xp, bias.empty() ? nullptr : bias.data(), aq, yp, scratch.mutable_data(), ep);
    }
    return out;
}

// Y (N, M, P) float32 = act(int8 1 x 1 Conv of X (N, K, P) float32) with one Int8Weight (M, K)
// (int8_pointwise_conv.h): the kernel int8_conv2d takes for 1 x 1 windows of stride 1, callable
// on its own for (N, K, P) data such as a 1-D Conv's.
py::array int8_pointwise_conv_py(const qrt::Int8PackedWeight& w, const py::object& x_obj, const py::object& bias_obj,
                                 const std::string& act_quant, double act_scale, int64_t act_zero_point,
                                 const std::string& activation) {
    const qrt::FloatEpilogue ep = float_epilogue_arg(activation);
    const qrt::Int8ActQuant aq = qrt::bind::act_quant_arg(act_quant, act_scale, act_zero_point);
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    if (x.ndim() != 3 || x.shape(1) != w.k || x.shape(2) < 1)
        throw py::value_error("X has shape " + shape_str(x) + ", expected (N, K, P) with K = " + std::to_string(w.k) +
                              " (the weight's) and P >= 1");
    std::vector<double> bias;
    if (!bias_obj.is_none()) {
        py::array b = qrt::bind::bias_array(bias_obj, w.n);
        bias.resize(static_cast<size_t>(w.n));
        qrt::bind::copy_bias_f64(b, w.n, w.n, bias.data());
    }
    py::array_t<float> out = qrt::bind::new_f32({x.shape(0), static_cast<py::ssize_t>(w.n), x.shape(2)});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::int8_pointwise_conv(w, x.shape(0), x.shape(2), xp, bias.empty() ? nullptr : bias.data(), aq, yp,
                                 qrt::int8_current_isa(), qrt::int8_get_threads(), ep);
    }
    return out;
}


// Y (N, M, OH, OW) float32 = act(depthwise Conv) of X (N, C, H, W) float32 with W (M, 1, kh, kw)
// float32 (depthwise_conv.h).
py::object depthwise_conv2d_py(const py::object& x_obj, const py::object& w_obj, const py::sequence& strides,
                               const py::sequence& pads, const py::sequence& dilations, const py::object& bias_obj,
                               const std::string& activation, bool channel_means) {
    const qrt::FloatEpilogue ep = float_epilogue_arg(activation);
    py::array x = nchw_input(x_obj);
    py::array w = contiguous_array_of<float>(w_obj, "W", "float32");
    if (w.ndim() != 4 || w.shape(1) != 1 || w.shape(0) < 1 || w.shape(0) % x.shape(1) != 0)
        throw py::value_error("W has shape " + shape_str(w) + ", expected (M, 1, kh, kw) with M a multiple of C = " +
                              std::to_string(x.shape(1)));
    const qrt::ConvGeometry g = conv_geometry(x, w.shape(2), w.shape(3), strides, pads, dilations, w.shape(0),
                                              x.shape(1));
    py::array b;
    const float* bp = f32_bias_arg(bias_obj, g.m, b);
    py::array_t<float> out = nchw_output(g);
    py::array_t<float> means;
    if (channel_means) means = py::array_t<float>(std::vector<py::ssize_t>{g.n, g.m, 1, 1});
    const float* xp = static_cast<const float*>(x.data());
    const float* wp = static_cast<const float*>(w.data());
    float* yp = out.mutable_data();
    float* mp = channel_means ? means.mutable_data() : nullptr;
    {
        py::gil_scoped_release release;
        qrt::depthwise_conv2d(g, xp, wp, bp, ep, yp, mp);
    }
    if (channel_means) return py::make_tuple(out, means);
    return out;
}

// Y (N, M, OH, OW) float32 = act(Conv of X (N, C, H, W) float32 with W (M, C * kh * kw) float32, one
// group): f32_channel_gemm.h's direct form.
py::array f32_conv2d_py(const py::object& x_obj, const py::object& w_obj, const py::sequence& kernel,
                        const py::sequence& strides, const py::sequence& pads, const py::sequence& dilations,
                        const py::object& bias_obj, const std::string& activation) {
    const qrt::FloatEpilogue ep = float_epilogue_arg(activation);
    py::array x = nchw_input(x_obj);
    py::array w = contiguous_array_of<float>(w_obj, "W", "float32");
    const std::vector<int64_t> k = ints(kernel, 2, "kernel");
    if (w.ndim() != 2 || w.shape(0) < 1)
        throw py::value_error("W has shape " + shape_str(w) + ", expected (M, C * kh * kw) with M >= 1");
    const qrt::ConvGeometry g = conv_geometry(x, k[0], k[1], strides, pads, dilations, w.shape(0), 1);
    if (w.shape(1) != g.c * g.kh * g.kw)
        throw py::value_error("W has shape " + shape_str(w) + ", expected (M, C * kh * kw) = (" +
                              std::to_string(g.m) + ", " + std::to_string(g.c * g.kh * g.kw) + ")");
    py::array b;
    const float* bp = f32_bias_arg(bias_obj, g.m, b);
    py::array_t<float> out = nchw_output(g);
    py::array_t<float> scratch = qrt::bind::new_f32({static_cast<py::ssize_t>(qrt::f32_conv2d_scratch_floats(g))});
    const float* xp = static_cast<const float*>(x.data());
    const float* wp = static_cast<const float*>(w.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::f32_conv2d(g, wp, xp, bp, ep, yp, scratch.mutable_data());
    }
    return out;
}

// Y (N, M, P) float32 = act(W (M, K) @ X (N, K, P) + bias) (f32_channel_gemm.h).
py::array f32_channel_gemm_py(const py::object& x_obj, const py::object& w_obj, const py::object& bias_obj,
                              const std::string& activation) {
    const qrt::FloatEpilogue ep = float_epilogue_arg(activation);
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    py::array w = contiguous_array_of<float>(w_obj, "W", "float32");
    if (x.ndim() != 3 || x.shape(1) < 1 || x.shape(2) < 1)
        throw py::value_error("X has shape " + shape_str(x) + ", expected (N, K, P) with K, P >= 1");
    if (w.ndim() != 2 || w.shape(0) < 1 || w.shape(1) != x.shape(1))
        throw py::value_error("W has shape " + shape_str(w) + ", expected (M, " + std::to_string(x.shape(1)) +
                              ") with M >= 1");
    const int64_t n = x.shape(0), k = x.shape(1), p = x.shape(2), m = w.shape(0);
    py::array b;
    const float* bp = f32_bias_arg(bias_obj, m, b);
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(m),
                                                 static_cast<py::ssize_t>(p)});
    const float* xp = static_cast<const float*>(x.data());
    const float* wp = static_cast<const float*>(w.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::f32_channel_gemm(n, m, k, p, wp, xp, bp, ep, yp);
    }
    return out;
}

// Y (N, C, OH, OW) float32 = MaxPool of X (N, C, H, W) float32 (max_pool.h).
py::array max_pool2d_py(const py::object& x_obj, const py::sequence& kernel, const py::sequence& strides,
                        const py::sequence& pads, const py::sequence& dilations, const py::sequence& out_size) {
    py::array x = nchw_input(x_obj);
    const std::vector<int64_t> k = ints(kernel, 2, "kernel"), s = ints(strides, 2, "strides"),
                               p = ints(pads, 4, "pads (top, left, bottom, right)"), d = ints(dilations, 2, "dilations"),
                               o = ints(out_size, 2, "out_size");
    qrt::PoolGeometry g;
    g.n = x.shape(0), g.c = x.shape(1), g.h = x.shape(2), g.w = x.shape(3);
    g.kh = k[0], g.kw = k[1], g.sh = s[0], g.sw = s[1], g.dh = d[0], g.dw = d[1];
    g.pt = p[0], g.pl = p[1], g.pb = p[2], g.pr = p[3], g.oh = o[0], g.ow = o[1];
    try {
        qrt::max_pool_check_geometry(g);     // before the output (out_size's) is allocated
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(g.n), static_cast<py::ssize_t>(g.c),
                              static_cast<py::ssize_t>(g.oh), static_cast<py::ssize_t>(g.ow)});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::max_pool2d(g, xp, yp);
    }
    return out;
}

// An element-wise float32 kernel fn(x, y, count) on X (float32 C-contiguous, any shape), into a
// new array of X's shape, without the GIL.
template <class Fn>
py::array map_f32(const py::object& x_obj, Fn fn) {
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    py::array_t<float> out = qrt::bind::new_f32(shape);
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    const int64_t count = static_cast<int64_t>(x.size());
    {
        py::gil_scoped_release release;
        fn(xp, yp, count);
    }
    return out;
}

// Sigmoid of float32 X (sigmoid.h).
py::array sigmoid_py(const py::object& x_obj) { return map_f32(x_obj, qrt::sigmoid_f32); }

// HardSigmoid (swish false) or HardSwish of float32 X (hard_sigmoid.h).
py::array hard_sigmoid_py(const py::object& x_obj, double alpha, double beta, bool swish) {
    return map_f32(x_obj, [&](const float* xp, float* yp, int64_t count) {
        qrt::hard_sigmoid(xp, yp, count, static_cast<float>(alpha), static_cast<float>(beta), swish);
    });
}

// Y (rows, cols) float32 = act(A op B), each operand full (rows, cols), one value per row (rows,) or
// one value (1,): kind 0, 1, 2 (elementwise_f32.h).
py::array binary_f32_py(const std::string& op, const py::object& a_obj, int a_kind, const py::object& b_obj,
                        int b_kind, int64_t rows, int64_t cols, const std::string& activation) {
    qrt::BinaryOp bop;
    if (op == "add") bop = qrt::BinaryOp::add;
    else if (op == "sub") bop = qrt::BinaryOp::sub;
    else if (op == "mul") bop = qrt::BinaryOp::mul;
    else if (op == "div") bop = qrt::BinaryOp::div;
    else throw py::value_error("op = '" + op + "', expected add, sub, mul or div");
    if (rows < 0 || cols < 0) throw py::value_error("rows and cols must be >= 0");
    if (activation != "none" && activation != "relu")
        throw py::value_error("activation = '" + activation + "', expected none or relu");
    const qrt::Activation act = activation == "relu" ? qrt::Activation::relu : qrt::Activation::none;
    py::array a = contiguous_array_of<float>(a_obj, "A", "float32"), b = contiguous_array_of<float>(b_obj, "B", "float32");
    auto check = [&](const py::array& t, int kind, const char* name) {
        const int64_t want = kind == 0 ? rows * cols : kind == 1 ? rows : 1;
        if (kind < 0 || kind > 2)
            throw py::value_error(std::string(name) + "_kind = " + std::to_string(kind) + ", expected 0, 1 or 2");
        if (static_cast<int64_t>(t.size()) != want)
            throw py::value_error(std::string(name) + " has " + std::to_string(t.size()) + " values, expected " +
                                  std::to_string(want) + " for kind " + std::to_string(kind));
    };
    check(a, a_kind, "A");
    check(b, b_kind, "B");
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
    const float* ap = static_cast<const float*>(a.data());
    const float* bp = static_cast<const float*>(b.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::binary_f32(bop, ap, a_kind, bp, b_kind, yp, rows, cols, act);
    }
    return out;
}

// y (rows,) float32 = the mean of each row of X (rows, cols) float32 (elementwise_f32.h).
py::array mean_rows_f32_py(const py::object& x_obj) {
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    if (x.ndim() != 2 || x.shape(1) < 1) throw py::value_error("X has shape " + shape_str(x) + ", expected (rows, cols >= 1)");
    const int64_t rows = x.shape(0), cols = x.shape(1);
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(rows)});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::mean_rows_f32(xp, yp, rows, cols);
    }
    return out;
}

// cols (N, C * kh * kw, OH * OW) float32 of X (N, C, H, W) float32 (im2col.h).
py::array im2col_py(const py::object& x_obj, const py::sequence& kernel, const py::sequence& strides,
                    const py::sequence& pads, const py::sequence& dilations) {
    py::array x = nchw_input(x_obj);
    const std::vector<int64_t> k = ints(kernel, 2, "kernel");
    const qrt::ConvGeometry g = conv_geometry(x, k[0], k[1], strides, pads, dilations, x.shape(1), 1);
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(g.n),
                                                 static_cast<py::ssize_t>(g.c * g.kh * g.kw),
                                                 static_cast<py::ssize_t>(g.oh() * g.ow())});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    {
        py::gil_scoped_release release;
        qrt::im2col_f32(g, xp, yp);
    }
    return out;
}

}  // namespace

void bind_cnn(py::module_& m) {
    m.def("int8_conv2d", &int8_conv2d_py, py::arg("weights"), py::arg("x"), py::arg("kernel"), py::arg("strides"),
          py::arg("pads"), py::arg("dilations"), py::arg("bias") = py::none(), py::arg("act_quant") = "dynamic",
          py::arg("act_scale") = 1.0, py::arg("act_zero_point") = 0, py::arg("activation") = "none",
          "Y (N, M, OH, OW) float32 = act(int8 Conv of X (N, C, H, W) float32 C-contiguous): weights one "
          "Int8Weight per group, each packed from qdata (M/group, kh * kw * C/group) in tap-major column order "
          "(ki, kj, c); kernel (kh, kw), strides (sh, sw), pads (top, left, bottom, right), dilations (dh, dw); "
          "bias (M,) float32/float64 or None; act_quant 'dynamic' (one scale per patch) or 'static'; activation "
          "'none', 'relu', 'gelu', 'gelu_tanh', 'hard_swish' or 'silu'. The bits of kernels/reference/packed.py's "
          "packed_conv_ref before the activation (csrc/int8_conv.h).");
    m.def("int8_pointwise_conv", &int8_pointwise_conv_py, py::arg("weight"), py::arg("x"), py::arg("bias") = py::none(),
          py::arg("act_quant") = "dynamic", py::arg("act_scale") = 1.0, py::arg("act_zero_point") = 0,
          py::arg("activation") = "none",
          "Y (N, M, P) float32 = act(int8 1 x 1 Conv of X (N, K, P) float32 C-contiguous) with weight an Int8Weight "
          "(M, K), computed on NCHW memory (int8_pointwise_conv.h): the kernel int8_conv2d runs for 1 x 1 windows of "
          "stride 1 without pads and one group. bias (M,) float32/float64 or None; act_quant 'dynamic' (one scale "
          "per pixel) or 'static'; activation as int8_conv2d's. The bits of packed_conv_ref before the "
          "activation.");
    m.def("depthwise_conv2d", &depthwise_conv2d_py, py::arg("x"), py::arg("w"), py::arg("strides"), py::arg("pads"),
          py::arg("dilations"), py::arg("bias") = py::none(), py::arg("activation") = "none",
          py::arg("channel_means") = false,
          "Y (N, M, OH, OW) float32 = act(depthwise Conv (group = C) of X (N, C, H, W) float32 C-contiguous with W "
          "(M, 1, kh, kw) float32, M a multiple of C); strides (sh, sw), pads (top, left, bottom, right), "
          "dilations (dh, dw); bias (M,) float32 or None; activation 'none', 'relu', 'gelu', 'gelu_tanh', "
          "'hard_swish' or 'silu'. float32 sums in a fixed order (csrc/depthwise_conv.h). channel_means: returns (Y, means) "
          "with means (N, M, 1, 1) float32 each plane's mean, the bits of mean_rows_f32 on Y.");
    m.def("f32_channel_gemm", &f32_channel_gemm_py, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
          py::arg("activation") = "none",
          "Y (N, M, P) float32 = act(W (M, K) @ X (N, K, P) + bias): a float32 Conv on NCHW memory (X a 1 x 1 "
          "Conv's input as (N, C, H * W), or an im2col). X, W float32 C-contiguous, bias (M,) float32 or None; "
          "activation 'none', 'relu', 'gelu', 'gelu_tanh', 'hard_swish' or 'silu'. Sums by FMA in k order from 0, then "
          "the bias: the same bits on every path and thread count (csrc/f32_channel_gemm.h).");
    m.def("f32_conv2d", &f32_conv2d_py, py::arg("x"), py::arg("w"), py::arg("kernel"), py::arg("strides"),
          py::arg("pads"), py::arg("dilations"), py::arg("bias") = py::none(), py::arg("activation") = "none",
          "Y (N, M, OH, OW) float32 = act(Conv of X (N, C, H, W) float32 C-contiguous with W (M, C * kh * kw) "
          "float32, one group); kernel (kh, kw), strides (sh, sw), pads (top, left, bottom, right), dilations "
          "(dh, dw); bias (M,) float32 or None; activation as f32_channel_gemm's. The bits of f32_channel_gemm "
          "on im2col's columns, without them (csrc/f32_channel_gemm.h).");
    m.def("max_pool2d", &max_pool2d_py, py::arg("x"), py::arg("kernel"), py::arg("strides"), py::arg("pads"),
          py::arg("dilations"), py::arg("out_size"),
          "Y (N, C, OH, OW) float32 = MaxPool of X (N, C, H, W) float32 C-contiguous; pads (top, left, bottom, "
          "right), the end ones grown to cover any ceil_mode overhang; out_size (OH, OW). -inf padding, NaN kept "
          "once seen: the reference's bits (csrc/max_pool.h).");
    m.def("im2col", &im2col_py, py::arg("x"), py::arg("kernel"), py::arg("strides"), py::arg("pads"),
          py::arg("dilations"),
          "cols (N, C * kh * kw, OH * OW) float32 of X (N, C, H, W) float32 C-contiguous: row (c, ki, kj), column "
          "r * OW + q holds X's value under that tap of output (r, q), 0 in the padding (csrc/im2col.h).");
    m.def("binary_f32", &binary_f32_py, py::arg("op"), py::arg("a"), py::arg("a_kind"), py::arg("b"), py::arg("b_kind"),
          py::arg("rows"), py::arg("cols"), py::arg("activation") = "none",
          "Y (rows, cols) float32 = act(A op B) (op 'add', 'sub', 'mul', 'div'; activation 'none' or 'relu'), "
          "each operand float32 C-contiguous of kind 0 (rows * cols values), 1 (one per row) or 2 (one value): "
          "numpy's float32 bits, then the Relu op's (csrc/elementwise_f32.h).");
    m.def("mean_rows_f32", &mean_rows_f32_py, py::arg("x"),
          "y (rows,) float32 = the mean of each row of X (rows, cols) float32 C-contiguous, summed in float64 and "
          "rounded once (csrc/elementwise_f32.h).");
    m.def("sigmoid", &sigmoid_py, py::arg("x"),
          "1 / (1 + exp(-X)) in float32 by the stable form, the same bits on every path (csrc/sigmoid.h). "
          "X float32 C-contiguous, any shape; a new array.");
    m.def("hard_sigmoid", &hard_sigmoid_py, py::arg("x"), py::arg("alpha"), py::arg("beta"), py::arg("swish") = false,
          "min(max(X * alpha + beta, 0), 1) in float32 (alpha, beta rounded to float32), times X when swish: "
          "the reference's bits (csrc/hard_sigmoid.h). X float32 C-contiguous, any shape; a new array.");
}
