// pybind11 bindings of the int4_grouped weight-only Linear (int4_gemm.h), added to the one
// module by bindings.cpp's call of bind_int4(m). Every array is checked here (dtype,
// contiguity, shape, scales finite > 0, zero points <= 15): a wrong call is a TypeError /
// ValueError, never a crash.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "int4_gemm.h"
#include "int8_gemm.h"
#include "bind_checks.h"

namespace py = pybind11;

namespace {

using qrt::bind::contiguous_array_of;
using qrt::bind::require_c_contiguous;
using qrt::bind::shape_str;

void require_2d(const py::array& a, const char* what, int64_t d0, int64_t d1, const std::string& expected) {
    if (a.ndim() != 2 || a.shape(0) != d0 || a.shape(1) != d1)
        throw py::value_error(std::string(what) + " has shape " + shape_str(a) + ", expected " + expected);
}

std::unique_ptr<qrt::Int4Weight> make_int4(const py::object& qdata_obj, const py::object& scale_obj,
                                           const py::object& zp_obj, const py::tuple& shape, int64_t group_size) {
    if (shape.size() != 2) throw py::value_error("shape must be (N, K)");
    const int64_t n = shape[0].cast<int64_t>(), k = shape[1].cast<int64_t>();
    if (n < 1 || k < 1) throw py::value_error("shape (" + std::to_string(n) + ", " + std::to_string(k) + ") must have N, K >= 1");
    if (group_size < 2 || group_size % 2)
        throw py::value_error("group_size = " + std::to_string(group_size) + ", expected an even int >= 2");
    const int64_t groups = (k + group_size - 1) / group_size;
    const std::string ng = "(" + std::to_string(n) + ", " + std::to_string(groups) + ")";
    py::array q = contiguous_array_of<uint8_t>(qdata_obj, "qdata", "uint8");
    require_2d(q, "qdata", n, groups * group_size / 2,
               "(" + std::to_string(n) + ", " + std::to_string(groups * group_size / 2) + ") (N, ceil(K / g) * g / 2)");
    py::array s = contiguous_array_of<float>(scale_obj, "scale", "float32");
    require_2d(s, "scale", n, groups, ng + " (N, ceil(K / g))");
    const float* sp = static_cast<const float*>(s.data());
    for (int64_t i = 0; i < n * groups; ++i)
        if (!(std::isfinite(sp[i]) && sp[i] > 0))
            throw py::value_error("scale.flat[" + std::to_string(i) + "] = " + std::to_string(sp[i]) + ", expected finite and > 0");
    const uint8_t* zp = nullptr;
    py::array z;
    if (!zp_obj.is_none()) {
        z = contiguous_array_of<uint8_t>(zp_obj, "zero_point", "uint8");
        require_2d(z, "zero_point", n, groups, ng + " like scale, or None");
        zp = static_cast<const uint8_t*>(z.data());
    }
    try {
        return std::make_unique<qrt::Int4Weight>(
            qrt::int4_make_weight(static_cast<const uint8_t*>(q.data()), sp, zp, n, k, group_size));
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

py::array int4_linear_py(const qrt::Int4Weight& w, const py::object& x_obj, const py::object& bias_obj,
                         const std::string& isa_name) {
    qrt::Int4Isa isa;
    try {
        isa = qrt::int4_isa_from_name(isa_name, w);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    py::array x = contiguous_array_of<float>(x_obj, "X", "float32");
    if (x.ndim() != 2 || x.shape(1) != w.k)
        throw py::value_error("X has shape " + shape_str(x) + ", expected (M, " + std::to_string(w.k) + ") (K of the weight)");
    const int64_t m = x.shape(0);
    std::vector<double> bias;
    if (!bias_obj.is_none()) {
        if (!py::isinstance<py::array>(bias_obj)) throw py::type_error("bias must be a numpy array of float32 or float64, or None");
        py::array b = py::reinterpret_borrow<py::array>(bias_obj);
        if (b.ndim() != 1 || b.shape(0) != w.n)
            throw py::value_error("bias has shape " + shape_str(b) + ", expected (" + std::to_string(w.n) + ",)");
        bias.resize(static_cast<size_t>(w.n));
        if (b.dtype().equal(py::dtype::of<float>())) {
            auto v = b.unchecked<float, 1>();
            for (int64_t i = 0; i < w.n; ++i) bias[i] = v(i);
        } else if (b.dtype().equal(py::dtype::of<double>())) {
            auto v = b.unchecked<double, 1>();
            for (int64_t i = 0; i < w.n; ++i) bias[i] = v(i);
        } else {
            throw py::type_error("bias must have dtype float32 or float64, got " + py::str(b.dtype()).cast<std::string>());
        }
    }
    py::array_t<float> out = qrt::bind::new_f32({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(w.n)});
    const float* xp = static_cast<const float*>(x.data());
    float* yp = out.mutable_data();
    const double* bp = bias.empty() ? nullptr : bias.data();
    const int threads = qrt::int8_get_threads();
    {
        py::gil_scoped_release release;
        qrt::int4_linear(w, xp, m, bp, yp, isa, threads);
    }
    return out;
}

}  // namespace

void bind_int4(py::module_& m) {
    py::class_<qrt::Int4Weight>(m, "Int4Weight",
                                "An int4_grouped weight held for int4_linear: the nibble-packed qdata as stored, "
                                "scales and zero points per (row, group).")
        .def(py::init(&make_int4), py::arg("qdata"), py::arg("scale"), py::arg("zero_point"), py::arg("shape"),
             py::arg("group_size"),
             "qdata (N, ceil(K/g)*g/2) uint8, scale (N, G) float32 (finite, > 0), zero_point (N, G) uint8 or None "
             "(symmetric: signed nibbles), shape (N, K), group_size g even.")
        .def_property_readonly("n", [](const qrt::Int4Weight& w) { return w.n; })
        .def_property_readonly("k", [](const qrt::Int4Weight& w) { return w.k; })
        .def_property_readonly("group_size", [](const qrt::Int4Weight& w) { return w.group_size; })
        .def_property_readonly("nbytes", &qrt::Int4Weight::nbytes)
        .def_property_readonly("isa", [](const qrt::Int4Weight& w) { return std::string(qrt::int4_isa_name(qrt::int4_auto_isa(w))); },
                               "the code path int4_linear takes for this weight now")
        .def("__repr__", [](const qrt::Int4Weight& w) {
            return "Int4Weight(N=" + std::to_string(w.n) + ", K=" + std::to_string(w.k) + ", group_size=" +
                   std::to_string(w.group_size) + (w.symmetric ? ", symmetric)" : ", zero_point)");
        });
    m.def("int4_linear", &int4_linear_py, py::arg("weight"), py::arg("x"), py::arg("bias") = py::none(),
          py::arg("isa") = "auto",
          "Y (M, N) float32 = X (M, K) float32 C-contiguous @ dequant(W).T + bias (float64 add, one rounding); "
          "float32 accumulation, nibbles unpacked in registers (csrc/int4_gemm.h). isa: 'auto', 'avx512' "
          "(group_size % 32 == 0), 'avx2' (group_size % 16 == 0) or 'scalar'.");
    m.def("int4_isas", []() {
            py::list out;
            for (auto isa : {qrt::Int4Isa::avx512, qrt::Int4Isa::avx2, qrt::Int4Isa::scalar})
                if (qrt::int4_isa_supported(isa)) out.append(qrt::int4_isa_name(isa));
            return out;
        },
        "The int4 code paths this CPU can run, fastest first.");
}
