// Argument checks shared by the binding files (bindings.cpp, bind_sparse.cpp, bind_int4.cpp,
// bind_fused.cpp): every array a kernel reads is checked with a Python exception that names
// the argument, what it got and what was expected, so a kernel can trust raw pointers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "activation.h"
#include "int8_gemm.h"
#include "output_cache.h"

namespace qrt {
namespace bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Whether `a` holds T in native byte order. Compared as equivalent types (PyArray_EquivTypes),
// not as the same dtype object: arrays made by views, memory maps or pickles may carry their
// own, equal dtype instance.
template <typename T>
bool has_dtype(const py::array& a) {
    return a.dtype().equal(py::dtype::of<T>());
}

// `obj` as a numpy array (any dtype), else TypeError.
inline py::array as_array(const py::handle& obj, const char* what) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(what) + " must be a numpy array, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    return py::reinterpret_borrow<py::array>(obj);
}

// `obj` as a numpy array of dtype T (exactly: no silent conversion), else TypeError.
template <typename T>
py::array as_array_of(const py::handle& obj, const char* what, const char* expected_dtype) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(what) + " must be a numpy array of " + expected_dtype + ", got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!has_dtype<T>(a))
        throw py::type_error(std::string(what) + " must have dtype " + expected_dtype + ", got " + dtype_str(a));
    return a;
}

inline void require_c_contiguous(const py::array& a, const char* what) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous (np.ascontiguousarray), got strides that are not");
}

// as_array_of + require_c_contiguous: an array a kernel reads by raw pointer.
template <typename T>
py::array contiguous_array_of(const py::handle& obj, const char* what, const char* expected_dtype) {
    py::array a = as_array_of<T>(obj, what, expected_dtype);
    require_c_contiguous(a, what);
    return a;
}

// A Linear's bias argument (not None): a (n,) numpy array, else TypeError / ValueError.
inline py::array bias_array(const py::handle& obj, int64_t n) {
    py::array b = as_array(obj, "bias");
    if (b.ndim() != 1 || b.shape(0) != n)
        throw py::value_error("bias has shape " + shape_str(b) + ", expected (" + std::to_string(n) +
                              ",) (N of the weight)");
    return b;
}

// bias_array's b (float32 or float64, any stride) as float64 into dst[0, n), dst[n, padded)
// set to 0: the kernels add the bias in float64, as the reference does, over whole panels.
inline void copy_bias_f64(const py::array& b, int64_t n, int64_t padded, double* dst) {
    for (int64_t i = n; i < padded; ++i) dst[i] = 0.0;
    if (has_dtype<float>(b)) {
        auto v = b.unchecked<float, 1>();
        for (int64_t i = 0; i < n; ++i) dst[i] = v(i);
    } else if (has_dtype<double>(b)) {
        auto v = b.unchecked<double, 1>();
        for (int64_t i = 0; i < n; ++i) dst[i] = v(i);
    } else {
        throw py::type_error("bias must have dtype float32 or float64, got " + dtype_str(b));
    }
}

// The (m, n) float32 output: a new array for None (output_cache.h), else `out` checked (dtype, shape,
// C-contiguous, writeable).
inline py::array output_f32(const py::handle& out_obj, int64_t m, int64_t n) {
    if (out_obj.is_none()) return new_f32({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(n)});
    py::array out = as_array_of<float>(out_obj, "out", "float32");
    if (out.ndim() != 2 || out.shape(0) != m || out.shape(1) != n)
        throw py::value_error("out has shape " + shape_str(out) + ", expected (" + std::to_string(m) + ", " +
                              std::to_string(n) + ")");
    require_c_contiguous(out, "out");
    if (!out.writeable()) throw py::value_error("out must be writeable");
    return out;
}

// Whether `obj` is a numpy array holding T in native byte order; never raises (the bound
// session steps ask it before they take a call, and hand the call on when not).
template <typename T>
bool is_array_of(const py::handle& obj) {
    return py::array::check_(obj) && has_dtype<T>(py::reinterpret_borrow<py::array>(obj));
}

// The base of a session step bound in C++ (bind_linear_call.cpp's LinearCall, bind_fused.cpp's
// AttentionStep and SkipLayerNormStep): `general` is the Python run the kernel factory made,
// which takes every call the step does not take itself, and raises the errors.
class BoundStep {
  public:
    explicit BoundStep(py::object general) : general_(std::move(general)) {
        if (!PyCallable_Check(general_.ptr())) throw py::type_error("general must be callable");
    }

  protected:
    py::object fallback(const py::args& args, const py::kwargs& kwargs) const { return general_(*args, **kwargs); }

  private:
    py::object general_;
};

// An epilogue activation by name ('none', 'relu', 'gelu', 'gelu_tanh'), else ValueError.
inline Activation activation_arg(const std::string& name) {
    try {
        return activation_from_name(name);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

// The integer kernels' activation quantization: 'dynamic' (per-row scales), or 'static' with a
// finite scale > 0 and a zero point in [-128, 127]; else ValueError.
inline Int8ActQuant act_quant_arg(const std::string& act_quant, double act_scale, int64_t act_zero_point) {
    Int8ActQuant aq;
    if (act_quant == "static") {
        if (!(std::isfinite(act_scale) && act_scale > 0))
            throw py::value_error("act_scale = " + std::to_string(act_scale) + ", expected finite and > 0");
        if (act_zero_point < -128 || act_zero_point > 127)
            throw py::value_error("act_zero_point = " + std::to_string(act_zero_point) + ", expected an int in [-128, 127]");
        aq.is_static = true;
        aq.scale = act_scale;
        aq.zero_point = static_cast<int32_t>(act_zero_point);
    } else if (act_quant != "dynamic") {
        throw py::value_error("act_quant = '" + act_quant + "', expected 'dynamic' or 'static' (the integer kernel; "
                              "weight-only 'none' is a float matmul on the dequantized weight)");
    }
    return aq;
}

}  // namespace bind
}  // namespace qrt
