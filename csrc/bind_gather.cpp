// pybind11 bindings of the quantized-table Gather (embedding_gather.h), added to the one module
// by bindings.cpp's call of bind_gather(m). Every array is checked here (dtype, contiguity,
// shape; indices int32 / int64): a wrong call is a TypeError / ValueError, never a crash. An
// out-of-range index is not an exception here: the functions return its position (and write
// nothing), so the Python wrapper raises the reference's IndexError, with the table's name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "bind_checks.h"
#include "embedding_gather.h"
#include "gather_elements.h"
#include "int8_gemm.h"   // int8_get_threads: the native kernels' one thread count

namespace py = pybind11;

namespace {

using qrt::bind::as_array;
using qrt::bind::contiguous_array_of;
using qrt::bind::dtype_str;
using qrt::bind::has_dtype;
using qrt::bind::output_f32;
using qrt::bind::require_c_contiguous;
using qrt::bind::shape_str;

py::array checked_indices(const py::handle& obj) {
    py::array a = as_array(obj, "indices");
    if (!has_dtype<int32_t>(a) && !has_dtype<int64_t>(a))
        throw py::type_error("indices must have dtype int32 or int64, got " + dtype_str(a));
    if (a.ndim() != 1) throw py::value_error("indices has shape " + shape_str(a) + ", expected (n,) (flattened)");
    require_c_contiguous(a, "indices");
    return a;
}

// Runs f(pointer to the indices) as int32 or int64, with the GIL released (the dtype is asked
// of numpy before).
template <typename F>
int64_t with_indices(const py::array& idx, F&& f) {
    const bool idx32 = has_dtype<int32_t>(idx);
    const void* p = idx.data();
    py::gil_scoped_release release;
    return idx32 ? f(static_cast<const int32_t*>(p)) : f(static_cast<const int64_t*>(p));
}

void require_shape(const py::array& a, const char* what, std::initializer_list<int64_t> dims) {
    bool ok = a.ndim() == static_cast<py::ssize_t>(dims.size());
    std::string want = "(";
    int i = 0;
    for (int64_t dim : dims) {
        if (ok && a.shape(i) != dim) ok = false;
        want += (i ? ", " : "") + std::to_string(dim);
        ++i;
    }
    want += dims.size() == 1 ? ",)" : ")";
    if (!ok) throw py::value_error(std::string(what) + " has shape " + shape_str(a) + ", expected " + want);
}

int64_t gather_int8_py(const py::object& qdata_obj, const py::object& scale_obj, const py::object& zp_obj,
                       const py::object& indices_obj, const py::object& out_obj) {
    py::array q = contiguous_array_of<int8_t>(qdata_obj, "qdata", "int8");
    if (q.ndim() != 2 || q.shape(0) < 1 || q.shape(1) < 1)
        throw py::value_error("qdata has shape " + shape_str(q) + ", expected (V, D) with V, D >= 1");
    const int64_t v = q.shape(0), d = q.shape(1);
    py::array s = contiguous_array_of<float>(scale_obj, "scale", "float32");
    if (s.ndim() != 1 || (s.shape(0) != v && s.shape(0) != 1))
        throw py::value_error("scale has shape " + shape_str(s) + ", expected (" + std::to_string(v) +
                              ",) per row or (1,) per tensor");
    const int8_t* zp = nullptr;
    py::array z;
    if (!zp_obj.is_none()) {
        z = contiguous_array_of<int8_t>(zp_obj, "zero_point", "int8");
        require_shape(z, "zero_point", {s.shape(0)});
        zp = static_cast<const int8_t*>(z.data());
    }
    py::array idx = checked_indices(indices_obj);
    const int64_t n = idx.shape(0);
    py::array out = output_f32(out_obj, n, d);
    const bool per_row = s.shape(0) == v;
    const int8_t* qp = static_cast<const int8_t*>(q.data());
    const float* sp = static_cast<const float*>(s.data());
    float* op = static_cast<float*>(out.mutable_data());
    const int threads = qrt::int8_get_threads();
    return with_indices(idx, [&](auto* ip) { return qrt::gather_int8_rows(qp, sp, zp, per_row, v, d, ip, n, op, threads); });
}

int64_t gather_int4_py(const py::object& qdata_obj, const py::object& scale_obj, const py::object& zp_obj,
                       int64_t d, int64_t group_size, const py::object& indices_obj, const py::object& out_obj) {
    if (d < 1) throw py::value_error("d = " + std::to_string(d) + ", expected >= 1");
    if (group_size < 2 || group_size % 2)
        throw py::value_error("group_size = " + std::to_string(group_size) + ", expected an even int >= 2");
    const int64_t groups = (d + group_size - 1) / group_size;
    py::array q = contiguous_array_of<uint8_t>(qdata_obj, "qdata", "uint8");
    if (q.ndim() != 2 || q.shape(0) < 1)
        throw py::value_error("qdata has shape " + shape_str(q) + ", expected (V, ceil(D / g) * g / 2) with V >= 1");
    const int64_t v = q.shape(0);
    require_shape(q, "qdata", {v, groups * group_size / 2});
    py::array s = contiguous_array_of<float>(scale_obj, "scale", "float32");
    require_shape(s, "scale", {v, groups});
    const uint8_t* zp = nullptr;
    py::array z;
    if (!zp_obj.is_none()) {
        z = contiguous_array_of<uint8_t>(zp_obj, "zero_point", "uint8");
        require_shape(z, "zero_point", {v, groups});
        zp = static_cast<const uint8_t*>(z.data());
    }
    py::array idx = checked_indices(indices_obj);
    const int64_t n = idx.shape(0);
    py::array out = output_f32(out_obj, n, d);
    const uint8_t* qp = static_cast<const uint8_t*>(q.data());
    const float* sp = static_cast<const float*>(s.data());
    float* op = static_cast<float*>(out.mutable_data());
    const int threads = qrt::int8_get_threads();
    return with_indices(idx, [&](auto* ip) {
        return qrt::gather_int4_rows(qp, sp, zp, v, d, group_size, ip, n, op, threads);
    });
}

// data (outer, da, inner) float32, indices (outer, na, inner) int32 / int64, out like indices:
// GatherElements around the middle axis (gather_elements.h).
int64_t gather_elements_py(const py::object& data_obj, const py::object& indices_obj, const py::object& out_obj) {
    py::array d = contiguous_array_of<float>(data_obj, "data", "float32");
    if (d.ndim() != 3) throw py::value_error("data has shape " + shape_str(d) + ", expected (outer, da, inner)");
    py::array idx = as_array(indices_obj, "indices");
    if (!has_dtype<int32_t>(idx) && !has_dtype<int64_t>(idx))
        throw py::type_error("indices must have dtype int32 or int64, got " + dtype_str(idx));
    require_c_contiguous(idx, "indices");
    const int64_t outer = d.shape(0), da = d.shape(1), inner = d.shape(2);
    if (idx.ndim() != 3 || idx.shape(0) != outer || idx.shape(2) != inner)
        throw py::value_error("indices has shape " + shape_str(idx) + ", expected (" + std::to_string(outer) +
                              ", na, " + std::to_string(inner) + ") (data's outer and inner sizes)");
    const int64_t na = idx.shape(1);
    py::array out = contiguous_array_of<float>(out_obj, "out", "float32");
    require_shape(out, "out", {outer, na, inner});
    if (!out.writeable()) throw py::value_error("out must be writeable");
    if (outer * na * inner == 0) return -1;
    if (da == 0) return 0;   // every index is out of range of an empty axis
    const float* dp = static_cast<const float*>(d.data());
    float* op = static_cast<float*>(out.mutable_data());
    const int threads = qrt::int8_get_threads();
    return with_indices(idx, [&](auto* ip) { return qrt::gather_elements_f32(dp, outer, da, inner, ip, na, op, threads); });
}

}  // namespace

void bind_gather(py::module_& m) {
    m.def("gather_elements_f32", &gather_elements_py, py::arg("data"), py::arg("indices"), py::arg("out"),
          "out (outer, na, inner) float32 C-contiguous := data[o, indices[o, a, i] (+ da when negative), i]: "
          "GatherElements along the middle axis. data (outer, da, inner) float32, indices (outer, na, inner) "
          "int32/int64, both C-contiguous. Returns -1, or the position (C order) of the first index outside "
          "[-da, da) (then out is not written).");
    m.def("gather_int8_rows", &gather_int8_py, py::arg("qdata"), py::arg("scale"), py::arg("zero_point"),
          py::arg("indices"), py::arg("out"),
          "out (n, D) float32 C-contiguous := rows of the dequantized int8 table float32(qdata[r] - zero_point) * "
          "scale, r = indices[i] (+ V when negative). qdata (V, D) int8, scale (V,) or (1,) float32, zero_point "
          "like scale (int8) or None, indices (n,) int32/int64. Returns -1, or the position of the first index "
          "outside [-V, V) (then out is not written).");
    m.def("gather_int4_rows", &gather_int4_py, py::arg("qdata"), py::arg("scale"), py::arg("zero_point"),
          py::arg("d"), py::arg("group_size"), py::arg("indices"), py::arg("out"),
          "out (n, d) float32 C-contiguous := rows of the dequantized int4_grouped table; qdata (V, ceil(d/g)*g/2) "
          "uint8 (low nibble first; signed nibbles when zero_point is None), scale (V, ceil(d/g)) float32, "
          "zero_point like scale (uint8) or None, indices (n,) int32/int64. Returns -1, or the position of the "
          "first index outside [-V, V) (then out is not written).");
}
