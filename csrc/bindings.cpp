// The one pybind11 module of qrt: kernels.native_cpu._native.
//
// Everything Python-facing lives here; the kernels themselves (added by later work) are plain
// C++ on raw pointers in their own files, so they can be read and tested without pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "cpu_pair_probe.h"
#include "int8_gemm.h"
#include "peak_probe.h"
#include "work_pool.h"
#include "bind_checks.h"

namespace py = pybind11;

namespace {

using qrt::bind::bias_array;
using qrt::bind::copy_bias_f64;
using qrt::bind::output_f32;
using qrt::bind::shape_str;
using qrt::bind::dtype_str;
using qrt::bind::has_dtype;
using qrt::bind::as_array_of;
using qrt::bind::require_c_contiguous;

// The compiler that built this module, for benchmark reports and bug reports: a kernel's
// speed depends on it as much as on the CPU.
std::string compiler_version() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    return "msvc " + std::to_string(_MSC_FULL_VER);
#else
    return "unknown";
#endif
}

// MSVC reports __cplusplus as 199711L unless /Zc:__cplusplus is given; _MSVC_LANG is right.
long cplusplus_value() {
#if defined(_MSVC_LANG)
    return static_cast<long>(_MSVC_LANG);
#else
    return static_cast<long>(__cplusplus);
#endif
}

std::string cxx_standard() {
    const long v = cplusplus_value();
    if (v >= 202002L) return "C++20";
    if (v >= 201703L) return "C++17";
    if (v >= 201402L) return "C++14";
    return "C++11";
}

// --- argument checks: every array a kernel reads is checked here, with a Python exception that
// names the argument, what it got and what was expected (a kernel then trusts raw pointers) ---

// One expected dimension: a size, or any size (size < 0) shown by its name.
struct Dim {
    int64_t size;
    const char* name;
};

// The message is built only on failure: these checks run on every call.
void require_shape(const py::array& a, const char* what, std::initializer_list<Dim> want, const char* note = "") {
    bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
    size_t i = 0;
    for (const Dim& d : want) {
        ok = ok && (d.size < 0 || a.shape(static_cast<py::ssize_t>(i)) == d.size);
        ++i;
    }
    if (ok) return;
    std::string expected = "(";
    i = 0;
    for (const Dim& d : want) expected += (i++ ? ", " : "") + (d.size < 0 ? std::string(d.name) : std::to_string(d.size));
    expected += want.size() == 1 ? ",)" : ")";
    throw py::value_error(std::string(what) + " has shape " + shape_str(a) + ", expected " + expected + note);
}

// The packed weight from the "int8" layout's fields: qdata (N, K) int8, scale (N,) float32,
// zero_point (N,) int8 or None (per-tensor values are broadcast to (N,) by the caller).
std::unique_ptr<qrt::Int8PackedWeight> make_int8_weight(const py::object& qdata_obj, const py::object& scale_obj,
                                                        const py::object& zp_obj) {
    py::array q = as_array_of<int8_t>(qdata_obj, "qdata", "int8");
    require_shape(q, "qdata", {{-1, "N"}, {-1, "K"}});
    require_c_contiguous(q, "qdata");
    const int64_t n = q.shape(0), k = q.shape(1);
    if (n < 1 || k < 1) throw py::value_error("qdata has shape " + shape_str(q) + ", expected N >= 1 and K >= 1");
    py::array s = as_array_of<float>(scale_obj, "scale", "float32");
    require_shape(s, "scale", {{n, ""}}, " (one per output row)");
    require_c_contiguous(s, "scale");
    const float* sp = static_cast<const float*>(s.data());
    for (int64_t i = 0; i < n; ++i)
        if (!(std::isfinite(sp[i]) && sp[i] > 0))
            throw py::value_error("scale[" + std::to_string(i) + "] = " + std::to_string(sp[i]) + ", expected finite and > 0");
    const int8_t* zp = nullptr;
    py::array z;
    if (!zp_obj.is_none()) {
        z = as_array_of<int8_t>(zp_obj, "zero_point", "int8");
        require_shape(z, "zero_point", {{n, ""}}, " (one per output row) or None");
        require_c_contiguous(z, "zero_point");
        zp = static_cast<const int8_t*>(z.data());
    }
    auto w = std::make_unique<qrt::Int8PackedWeight>();
    try {
        *w = qrt::int8_pack_weight(static_cast<const int8_t*>(q.data()), n, k, sp, zp);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    return w;
}

// Y (M, N) float32 = int8 Linear of X (M, K) float32 (int8_gemm.h).
py::array int8_linear_py(const qrt::Int8PackedWeight& w, const py::object& x_obj, const py::object& bias_obj,
                         const std::string& act_quant, double act_scale, int64_t act_zero_point,
                         const py::object& out_obj, const std::string& activation) {
    const qrt::Activation act = qrt::bind::activation_arg(activation);
    const qrt::Int8ActQuant aq = qrt::bind::act_quant_arg(act_quant, act_scale, act_zero_point);
    py::array x = as_array_of<float>(x_obj, "X", "float32");
    require_shape(x, "X", {{-1, "M"}, {w.k, ""}}, " (K of the weight)");
    require_c_contiguous(x, "X");
    const int64_t m = x.shape(0);

    // float64, as the reference adds it, padded to whole panels (int8_linear's contract)
    qrt::AlignedArray<double> bias;
    if (!bias_obj.is_none()) {
        py::array b = bias_array(bias_obj, w.n);
        bias.allocate(static_cast<size_t>(w.padded_n()));
        copy_bias_f64(b, w.n, w.padded_n(), bias.get());
    }
    py::array out = output_f32(out_obj, m, w.n);
    const float* xp = static_cast<const float*>(x.data());
    float* yp = static_cast<float*>(out.mutable_data());
    {
        // the arrays stay referenced by this frame's handles while other Python threads run
        py::gil_scoped_release release;
        qrt::int8_linear(w, xp, m, bias.get(), aq, yp, act);   // bias.get(): nullptr when there is none
    }
    return out;
}

// y = act(y) in place: y any shape, float32, C-contiguous, writeable (activation.h).
void apply_activation_py(const py::object& y_obj, const std::string& activation) {
    const qrt::Activation act = qrt::bind::activation_arg(activation);
    py::array y = as_array_of<float>(y_obj, "y", "float32");
    require_c_contiguous(y, "y");
    if (!y.writeable()) throw py::value_error("y must be writeable");
    float* p = static_cast<float*>(y.mutable_data());
    const int64_t count = static_cast<int64_t>(y.size());
    py::gil_scoped_release release;
    qrt::activation_inplace(p, count, act);
}

// {"threads", "int8_gops", "int8_isa", "int8_ops_per_instruction", "fp32_gflops", "fp32_isa",
// "fp32_ops_per_instruction"} from the register-only loops of peak_probe.h.
py::dict measure_peaks_py(int threads, double seconds) {
    if (threads < 1 || threads > 1024) throw py::value_error("threads = " + std::to_string(threads) + ", expected 1 to 1024");
    if (!(seconds > 0 && seconds <= 60)) throw py::value_error("seconds = " + std::to_string(seconds) + ", expected > 0 and <= 60");
    qrt::PeakResult i8, f32;
    {
        py::gil_scoped_release release;
        i8 = qrt::measure_int8_peak(threads, seconds / 2);
        f32 = qrt::measure_fp32_peak(threads, seconds / 2);
    }
    py::dict out;
    out["threads"] = i8.threads;
    out["int8_gops"] = i8.ops_per_instruction ? py::object(py::float_(i8.ops_per_second / 1e9)) : py::object(py::none());
    out["int8_isa"] = i8.isa;
    out["int8_ops_per_instruction"] = i8.ops_per_instruction;
    out["fp32_gflops"] = f32.ops_per_instruction ? py::object(py::float_(f32.ops_per_second / 1e9)) : py::object(py::none());
    out["fp32_isa"] = f32.isa;
    out["fp32_ops_per_instruction"] = f32.ops_per_instruction;
    return out;
}

}  // namespace

void bind_sparse(py::module_& m);   // bind_sparse.cpp: the sparse int8 Linear
void bind_fused(py::module_& m);    // bind_fused.cpp: Attention, SkipLayerNormalization
void bind_int4(py::module_& m);     // bind_int4.cpp: the int4_grouped weight-only Linear
void bind_gather(py::module_& m);   // bind_gather.cpp: Gather on an int8 / int4_grouped table
void bind_linear_call(py::module_& m);   // bind_linear_call.cpp: a Linear step bound in C++
void bind_cnn(py::module_& m);           // bind_cnn.cpp: int8 and depthwise Conv, MaxPool, HardSwish

PYBIND11_MODULE(_native, m) {
    m.doc() = "qrt native CPU backend (built from csrc/): feature probe, build information, int8 Linear.";

    m.def(
        "cpu_features",
        []() {
            py::dict out;  // insertion-ordered, so the key order is the one in cpu_features.cpp
            for (const auto& kv : qrt::cpu_feature_list()) out[py::str(kv.first)] = kv.second;
            return out;
        },
        "dict[str, bool]: ISA features that the CPU has and the OS enabled (cpuid + xgetbv).");

    // --- int8 Linear (int8_gemm.h) ------------------------------------------------------------
    py::class_<qrt::Int8PackedWeight>(m, "Int8Weight",
                                      "An int8 weight packed once for int8_linear: VNNI panels of 64 output columns, "
                                      "column sums for the u8 shift, scales and zero points as float64 / int32.")
        .def(py::init(&make_int8_weight), py::arg("qdata"), py::arg("scale"), py::arg("zero_point") = py::none(),
             "qdata (N, K) int8 C-contiguous, scale (N,) float32 (finite, > 0), zero_point (N,) int8 or None.")
        .def_property_readonly("n", [](const qrt::Int8PackedWeight& w) { return w.n; })
        .def_property_readonly("k", [](const qrt::Int8PackedWeight& w) { return w.k; })
        .def_property_readonly("has_zero_point", [](const qrt::Int8PackedWeight& w) { return w.has_zero_point; })
        .def_property_readonly("has_q_min", [](const qrt::Int8PackedWeight& w) { return w.has_q_min; },
                               "some weight byte is -128: the AVX2 path takes its widening tile, not vpmaddubsw")
        .def_property_readonly("max_abs_q", [](const qrt::Int8PackedWeight& w) { return w.max_abs_q; },
                               "max |qw|: at most 63 (a narrow weight) takes the AVX2 narrow tile")
        .def_property_readonly("nbytes", &qrt::Int8PackedWeight::nbytes, "bytes held by the packed arrays")
        .def("__repr__", [](const qrt::Int8PackedWeight& w) {
            return "Int8Weight(N=" + std::to_string(w.n) + ", K=" + std::to_string(w.k) +
                   (w.has_zero_point ? ", zero_point" : ", symmetric") + ")";
        });

    m.def("int8_linear", &int8_linear_py, py::arg("weight"), py::arg("x"), py::arg("bias") = py::none(),
          py::arg("act_quant") = "dynamic", py::arg("act_scale") = 1.0, py::arg("act_zero_point") = 0,
          py::arg("out") = py::none(), py::arg("activation") = "none",
          "Y (M, N) float32 = act(float32(((s_w * acc) * s_x) + bias)), acc the exact integer product of the "
          "quantized X (M, K) float32 C-contiguous and the weight; act_quant 'dynamic' (per-row scales) or "
          "'static' (act_scale, act_zero_point). bias (N,) float32/float64 or None; out: an (M, N) float32 "
          "C-contiguous array to write into, or None; activation 'none', 'relu', 'gelu' or 'gelu_tanh' applied "
          "to each tile in the epilogue (csrc/activation.h). Bit-exact with kernels/reference/packed.py before "
          "the activation.");
    m.def("apply_activation", &apply_activation_py, py::arg("y"), py::arg("activation"),
          "y = act(y) in place, for y float32 C-contiguous writeable of any shape: the int8 Linear's epilogue "
          "activation on its own (same bits), on the current int8 code path and, for large y, its threads.");
    m.def("measure_peaks", &measure_peaks_py, py::arg("threads"), py::arg("seconds") = 0.2,
          "This machine's int8 vpdpbusd and fp32 FMA peak on `threads` OpenMP threads (register-only loops, "
          "about `seconds` in all): dict with int8_gops / fp32_gflops (None where the CPU lacks the "
          "instruction), the instruction timed (int8_isa, fp32_isa), ops per instruction, threads.");

    m.def("int8_isa", []() { return std::string(qrt::int8_isa_name(qrt::int8_current_isa())); },
          "The code path int8_linear takes now: 'amx', 'avx512_vnni', 'avx_vnni', 'avx2' or 'scalar'.");
    m.def("int8_isas", []() {
            py::list out;
            for (auto isa : {qrt::Int8Isa::amx, qrt::Int8Isa::avx512_vnni, qrt::Int8Isa::avx_vnni, qrt::Int8Isa::avx2, qrt::Int8Isa::scalar})
                if (qrt::int8_isa_supported(isa)) out.append(qrt::int8_isa_name(isa));
            return out;
        },
        "The code paths this CPU can run, fastest first.");
    m.def("set_int8_isa", [](const std::string& name) {
            try {
                qrt::int8_set_isa(name);
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        },
        py::arg("name"), "Force a code path ('amx', 'avx512_vnni', 'avx_vnni', 'avx2', 'scalar'), or 'auto' for the best one.");
    m.def("set_threads", [](int n) {
            if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
            qrt::int8_set_threads(n);
        },
        py::arg("n"), "Worker threads of the native kernels (OpenMP, and the work pool of csrc/work_pool.h).");
    m.def("get_threads", &qrt::int8_get_threads, "Worker threads of the native kernels.");
    m.def("work_pool_counts", [](int64_t items, int threads, int64_t spin) {
            if (items < 0 || threads < 1 || spin < 0)
                throw py::value_error("items >= 0, threads >= 1 and spin >= 0 expected");
            std::vector<std::atomic<int64_t>> hits(static_cast<size_t>(items));
            // each slot must be one thread for the whole call, and below `threads`
            std::vector<std::atomic<std::thread::id>> owner(static_cast<size_t>(threads));
            std::atomic<bool> bad_slot{false};
            {
                py::gil_scoped_release release;
                qrt::parallel_items(items, threads, [&](int64_t i, int slot) {
                    if (slot < 0 || slot >= threads) {
                        bad_slot = true;
                    } else {
                        std::thread::id none{};
                        const auto me = std::this_thread::get_id();
                        if (!owner[static_cast<size_t>(slot)].compare_exchange_strong(none, me) && none != me)
                            bad_slot = true;
                    }
                    volatile int64_t sink = 0;
                    for (int64_t t = 0; t < spin; ++t) sink = sink + t;   // some work per item
                    hits[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
                });
            }
            if (bad_slot) throw std::runtime_error("work pool: a slot was out of range or shared by two threads");
            py::array_t<int64_t> out(items);
            for (int64_t i = 0; i < items; ++i) out.mutable_at(i) = hits[static_cast<size_t>(i)].load();
            return out;
        },
        py::arg("items"), py::arg("threads"), py::arg("spin") = 0,
        "How many times the work pool (csrc/work_pool.h) ran each of `items` items on `threads` "
        "threads, each item spinning `spin` steps (for tests: every count must be 1); raises "
        "RuntimeError if a participant slot was out of range or held by two threads.");
    m.def("work_pool_order", [](int64_t items, int threads, int64_t spin) {
            if (items < 0 || threads < 1 || spin < 0)
                throw py::value_error("items >= 0, threads >= 1 and spin >= 0 expected");
            // per item: the slot that ran it and its place among that slot's items
            std::vector<int64_t> slot_of(static_cast<size_t>(items), -1), place(static_cast<size_t>(items), -1);
            std::vector<int64_t> ran(static_cast<size_t>(threads), 0);   // a slot is one thread
            {
                py::gil_scoped_release release;
                qrt::parallel_items(items, threads, [&](int64_t i, int slot) {
                    volatile int64_t sink = 0;
                    for (int64_t t = 0; t < spin; ++t) sink = sink + t;
                    slot_of[static_cast<size_t>(i)] = slot;
                    place[static_cast<size_t>(i)] = ran[static_cast<size_t>(slot)]++;
                });
            }
            py::array_t<int64_t> out({items, int64_t(2)});
            for (int64_t i = 0; i < items; ++i) {
                out.mutable_at(i, 0) = slot_of[static_cast<size_t>(i)];
                out.mutable_at(i, 1) = place[static_cast<size_t>(i)];
            }
            return out;
        },
        py::arg("items"), py::arg("threads"), py::arg("spin") = 0,
        "(items, 2) int64: for each item the work pool's slot that ran it (0: the caller) and "
        "its place in that slot's order of work (for tests of the claim order).");
    m.def("work_pool_stress", [](int callers, int calls, int64_t max_items, int max_threads, int max_spin, uint32_t seed) {
            if (callers < 1 || calls < 0 || max_items < 1 || max_threads < 1 || max_spin < 1)
                throw py::value_error("callers >= 1, calls >= 0, max_items >= 1, max_threads >= 1 and max_spin >= 1 expected");
            std::atomic<int64_t> wrong{0};
            {
                py::gil_scoped_release release;
                std::vector<std::thread> threads;
                for (int c = 0; c < callers; ++c)
                    threads.emplace_back([&, c] {
                        uint32_t state = seed * 2654435761u + static_cast<uint32_t>(c) * 40503u + 1u;
                        const auto next = [&state] { state = state * 1664525u + 1013904223u; return state >> 8; };
                        std::vector<std::atomic<int>> hits(static_cast<size_t>(max_items));
                        for (int call = 0; call < calls; ++call) {
                            const int64_t items = 1 + static_cast<int64_t>(next() % static_cast<uint32_t>(max_items));
                            const int nt = 1 + static_cast<int>(next() % static_cast<uint32_t>(max_threads));
                            const int spin = static_cast<int>(next() % static_cast<uint32_t>(max_spin));
                            for (int64_t i = 0; i < items; ++i) hits[static_cast<size_t>(i)].store(0);
                            qrt::parallel_items(items, nt, [&](int64_t i, int slot) {
                                if (slot < 0 || slot >= nt) wrong.fetch_add(1);
                                volatile int sink = 0;
                                for (int t = 0; t < spin; ++t) sink = sink + t;
                                hits[static_cast<size_t>(i)].fetch_add(1);
                            });
                            // an item run twice, or after its call returned, shows in this call's
                            // counts or the next's
                            for (int64_t i = 0; i < items; ++i)
                                if (hits[static_cast<size_t>(i)].load() != 1) wrong.fetch_add(1);
                            if (next() % 4096u == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
                        }
                    });
                for (std::thread& t : threads) t.join();
            }
            return wrong.load();
        },
        py::arg("callers"), py::arg("calls"), py::arg("max_items") = 300, py::arg("max_threads") = 4,
        py::arg("max_spin") = 200, py::arg("seed") = 0,
        "`callers` threads each make `calls` work pool calls (csrc/work_pool.h) at once, with random item counts "
        "(1..max_items), thread counts (1..max_threads) and item lengths (0..max_spin - 1 steps), now and then pausing "
        "so that workers sleep; "
        "returns how many items ran other than exactly once, or with a participant slot out of range (0 expected).");
    m.def("work_pool_round_ns", [](int64_t items, int threads, int64_t spin, int rounds) {
            if (items < 1 || threads < 1 || spin < 0 || rounds < 1)
                throw py::value_error("items >= 1, threads >= 1, spin >= 0 and rounds >= 1 expected");
            // each participant's result on its own cache line: a shared one would move between
            // the cores at every item and be timed as the pool's cost
            struct alignas(64) Sink { volatile int64_t v = 0; };
            std::vector<Sink> sinks(static_cast<size_t>(threads));
            const std::function<void(int64_t, int)> fn = [&](int64_t i, int slot) {
                int64_t s = i;
                for (int64_t t = 0; t < spin; ++t) s = s * 3 + t;
                sinks[static_cast<size_t>(slot)].v = s;
            };
            std::vector<double> ns;
            {
                py::gil_scoped_release release;
                for (int r = 0; r < std::min(rounds, 50); ++r) qrt::parallel_items(items, threads, fn);   // warm
                for (int r = 0; r < rounds; ++r) {
                    const auto t0 = std::chrono::steady_clock::now();
                    qrt::parallel_items(items, threads, fn);
                    ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
                }
            }
            std::nth_element(ns.begin(), ns.begin() + ns.size() / 2, ns.end());
            return ns[ns.size() / 2];
        },
        py::arg("items"), py::arg("threads"), py::arg("spin") = 0, py::arg("rounds") = 1000,
        "Median nanoseconds of one work pool round (csrc/work_pool.h) of `items` items on `threads` threads, each "
        "item `spin` dependent integer steps, over `rounds` back-to-back rounds (benchmarks/pool_rounds.py).");
    m.def("output_cache_stats", [] {
            const std::vector<int64_t> s = qrt::bind::output_cache_stats();
            return py::make_tuple(s[0], s[1], s[2]);
        },
        "(free blocks held, their bytes, cached outputs handed out so far) of the output block cache "
        "(csrc/output_cache.h): float32 outputs of 256 KiB or more reuse freed blocks.");
    m.def("output_cache_clear", &qrt::bind::output_cache_clear,
          "Frees every block the output cache holds (arrays still in use keep theirs).");
    m.def("output_cache_set_limit", [](int64_t bytes) {
            if (bytes < 0) throw py::value_error("limit must be >= 0 bytes, got " + std::to_string(bytes));
            return static_cast<int64_t>(qrt::bind::output_cache_set_limit(static_cast<size_t>(bytes)));
        },
        py::arg("bytes"),
        "Sets the most bytes of free blocks the output cache holds (0: no cache, every output a plain numpy "
        "array) and returns the previous limit (64 MiB at first; the package sets QRT_OUTPUT_CACHE_MB's on import).");
    m.def("cpu_pair_round_trip_ns", [](int cpu_a, int cpu_b, double seconds) {
            if (cpu_a < 0 || cpu_b < 0 || cpu_a == cpu_b)
                throw py::value_error("two different CPU numbers >= 0 expected, got " + std::to_string(cpu_a) + " and " +
                                      std::to_string(cpu_b));
            if (!(seconds > 0 && seconds <= 10))
                throw py::value_error("seconds must be in (0, 10], got " + std::to_string(seconds));
            py::gil_scoped_release release;
            return qrt::cpu_pair_round_trip_ns(cpu_a, cpu_b, seconds);
        },
        py::arg("cpu_a"), py::arg("cpu_b"), py::arg("seconds") = 0.05,
        "Nanoseconds per round trip of one cache line between threads pinned to cpu_a and cpu_b (csrc/cpu_pair_probe.h), "
        "about `seconds` of them; -1 where it cannot be measured (a CPU outside this process's affinity, no answer).");
    m.def("work_pool_moves", &qrt::work_pool_moves,
          "How many times a work pool worker was kept off its caller's CPU (woken elsewhere, or moved off when it "
          "joined a job on it).");
    m.def("move_thread_off", [](int cpu) {
            if (cpu < 0) throw py::value_error("cpu must be >= 0, got " + std::to_string(cpu));
            py::gil_scoped_release release;
            return qrt::move_thread_off(cpu);
        },
        py::arg("cpu"), "Move the calling thread off `cpu` the way a work pool worker does (its affinity set "
        "left as it was): the CPU it moved to, -1 where nothing moved. For tests.");
    m.def("thread_cpu", &qrt::thread_cpu, "The CPU the calling thread runs on (-1: unknown).");

    bind_sparse(m);
    bind_fused(m);
    bind_int4(m);
    bind_cnn(m);
    bind_gather(m);
    bind_linear_call(m);   // after the weight classes it takes

    m.def("cpu_brand", &qrt::cpu_brand, "The CPU brand string (cpuid), or the machine name off x86.");

    m.def(
        "build_info",
        []() {
            py::dict out;
            out["compiler"] = compiler_version();
            out["cxx_standard"] = cxx_standard();
            out["cplusplus"] = cplusplus_value();
            out["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                              std::to_string(PYBIND11_VERSION_MINOR) + "." +
                              std::to_string(PYBIND11_VERSION_PATCH);
#if defined(__OPTIMIZE__) || (defined(_MSC_VER) && !defined(_DEBUG))
            out["optimized"] = true;
#else
            out["optimized"] = false;
#endif
            out["openmp"] = qrt::int8_has_openmp();
            out["max_k_int32"] = qrt::kMaxKInt32;   // numeric_bounds.h: tied to kernels/core/bounds.py by a test
            out["max_exact_k"] = qrt::kMaxExactK;
            // Baseline ISA of this build: the compiler's own target, not -march=native, so
            // the same binary runs on any x86-64. Faster paths are chosen at run time.
#if defined(__AVX512F__)
            out["baseline_isa"] = "avx512f";
#elif defined(__AVX2__)
            out["baseline_isa"] = "avx2";
#elif defined(__x86_64__) || defined(_M_X64)
            out["baseline_isa"] = "x86-64";
#elif defined(__aarch64__) || defined(_M_ARM64)
            out["baseline_isa"] = "aarch64";
#else
            out["baseline_isa"] = "unknown";
#endif
            return out;
        },
        "dict: compiler, C++ standard, pybind11 version and baseline ISA of this build.");
}
