// A session step's run for an int8 or sparse int8 Linear as one C++ callable (LinearCall),
// added to the one module by bindings.cpp's call of bind_linear_call(m).
//
// Why: the kernels of a small model's Linear take a few microseconds (all-MiniLM-L6-v2 at
// batch 1 x seq 16; the GEMM sweep's M = 1 rows), and the Python between the session and the
// binding cost about as much: a frame checking X and the bias, a functools.partial carrying
// four keyword arguments into pybind11's keyword matching, two reshapes. LinearCall binds the
// weight, the activation quantization and the epilogue activation once, at plan time, checks
// X and the bias here, and runs the same kernel functions the bindings run (int8_linear,
// sparse_int8_linear), so the result is theirs, bit for bit.
//
// The call: LinearCall(x, weight=None, bias=None) -> (Y,), the session's step signature; the
// weight slot is ignored (the kernel binds its weight: kernels/registry.py). Y has X's shape
// with the last axis K replaced by N. Any call this path does not take (keywords, X not a
// C-contiguous float32 ndarray ending in K, a bias other than a float32 / float64 ndarray of
// shape (N,)) goes to `general`, the Python run the kernel factory made, which handles it or
// raises the error that names what was wrong.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "activation.h"
#include "bind_checks.h"
#include "int8_gemm.h"
#include "sparse_gemm.h"

namespace py = pybind11;

namespace {

class LinearCall : public qrt::bind::BoundStep {
public:
    LinearCall(py::object weight, const std::string& act_quant, double act_scale, int64_t act_zero_point,
               const std::string& activation, py::object general)
        : BoundStep(std::move(general)), weight_(std::move(weight)),
          aq_(qrt::bind::act_quant_arg(act_quant, act_scale, act_zero_point)),
          act_(qrt::bind::activation_arg(activation)) {
        if (py::isinstance<qrt::Int8PackedWeight>(weight_)) {
            dense_ = &weight_.cast<const qrt::Int8PackedWeight&>();
            n_ = dense_->n;
            k_ = dense_->k;
            bias_rows_ = dense_->padded_n();
        } else if (py::isinstance<qrt::SparseInt8Weight>(weight_)) {
            sparse_ = &weight_.cast<const qrt::SparseInt8Weight&>();
            n_ = sparse_->n;
            k_ = sparse_->k;
            bias_rows_ = sparse_->npad;
        } else {
            throw py::type_error("weight must be an Int8Weight or a SparseInt8Weight, got " +
                                 py::str(py::type::of(weight_).attr("__name__")).cast<std::string>());
        }
    }

    py::object call(const py::args& args, const py::kwargs& kwargs) const {
        const size_t na = args.size();
        if (kwargs.empty() && na >= 1 && na <= 3) {
            const py::handle x = args[0];
            const py::handle bias = na == 3 ? args[2] : py::handle(Py_None);
            if (fast_x(x) && (bias.is_none() || fast_bias(bias))) return py::make_tuple(run(x, bias));
        }
        return fallback(args, kwargs);
    }

    int64_t n() const { return n_; }
    int64_t k() const { return k_; }
    const py::object& weight() const { return weight_; }

private:
    // X: a float32 ndarray (native byte order), C-contiguous, at least 1-D, last axis K
    bool fast_x(py::handle x) const {
        if (k_ == 0 || !qrt::bind::is_array_of<float>(x)) return false;
        const auto a = py::reinterpret_borrow<py::array>(x);
        return a.ndim() >= 1 && a.shape(a.ndim() - 1) == k_ && (a.flags() & py::array::c_style);
    }

    // bias: a float32 / float64 ndarray of shape (N,), any stride (copy_bias_f64 reads strides)
    bool fast_bias(py::handle b) const {
        if (!(qrt::bind::is_array_of<float>(b) || qrt::bind::is_array_of<double>(b))) return false;
        const auto a = py::reinterpret_borrow<py::array>(b);
        return a.ndim() == 1 && a.shape(0) == n_;
    }

    py::array run(py::handle x_obj, py::handle bias_obj) const {
        const auto x = py::reinterpret_borrow<py::array>(x_obj);
        std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
        const int64_t m = static_cast<int64_t>(x.size() / k_);   // K > 0: both weight kinds refuse K = 0
        shape.back() = static_cast<py::ssize_t>(n_);
        py::array_t<float> out = qrt::bind::new_f32(shape);   // output_cache.h
        qrt::AlignedArray<double> bias;   // float64, padded to the kernel's rows (its contract)
        if (!bias_obj.is_none()) {
            bias.allocate(static_cast<size_t>(bias_rows_));
            qrt::bind::copy_bias_f64(py::reinterpret_borrow<py::array>(bias_obj), n_, bias_rows_, bias.get());
        }
        const float* xp = static_cast<const float*>(x.data());
        float* yp = out.mutable_data();
        {
            py::gil_scoped_release release;   // x and out stay referenced by this frame
            if (dense_ != nullptr)
                qrt::int8_linear(*dense_, xp, m, bias.get(), aq_, yp, act_);
            else
                qrt::sparse_int8_linear(*sparse_, xp, m, bias.get(), aq_, yp, qrt::SparsePath::automatic, act_);
        }
        return std::move(out);
    }

    py::object weight_;    // keeps the packed weight alive
    qrt::Int8ActQuant aq_;
    qrt::Activation act_;
    const qrt::Int8PackedWeight* dense_ = nullptr;
    const qrt::SparseInt8Weight* sparse_ = nullptr;
    int64_t n_ = 0, k_ = 0, bias_rows_ = 0;
};

}  // namespace

void bind_linear_call(py::module_& m) {
    py::class_<LinearCall>(
        m, "LinearCall",
        "A Linear's session step on an int8 / sparse int8 weight, bound once: call(x, weight=None, bias=None) -> (Y,) "
        "with Y = int8_linear / sparse_int8_linear of X (..., K) float32 C-contiguous (Y (..., N) float32, the same "
        "bits); the weight argument is ignored; any other call goes to `general` (csrc/bind_linear_call.cpp).")
        .def(py::init<py::object, const std::string&, double, int64_t, const std::string&, py::object>(),
             py::arg("weight"), py::arg("act_quant"), py::arg("act_scale"), py::arg("act_zero_point"),
             py::arg("activation"), py::arg("general"),
             "weight: an Int8Weight or SparseInt8Weight; act_quant 'dynamic' or 'static' (act_scale, "
             "act_zero_point); activation 'none', 'relu', 'gelu' or 'gelu_tanh'; general: the run for other calls.")
        .def("__call__", &LinearCall::call)
        .def_property_readonly("n", &LinearCall::n)
        .def_property_readonly("k", &LinearCall::k)
        .def_property_readonly("weight", &LinearCall::weight);
}
