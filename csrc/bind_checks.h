// Argument checks shared by the binding files (bindings.cpp, bind_sparse.cpp, bind_int4.cpp,
// bind_fused.cpp): every array a kernel reads is checked with a Python exception that names
// the argument, what it got and what was expected, so a kernel can trust raw pointers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

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

}  // namespace bind
}  // namespace qrt
