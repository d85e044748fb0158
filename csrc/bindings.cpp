// The one pybind11 module of qrt: kernels.native_cpu._native.
//
// Everything Python-facing lives here; the kernels themselves (added by later work) are plain
// C++ on raw pointers in their own files, so they can be read and tested without pybind11.
#include <pybind11/pybind11.h>

#include <string>

#include "cpu_features.h"

namespace py = pybind11;

namespace {

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

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "qrt native CPU backend (built from csrc/). Feature probe and build information.";

    m.def(
        "cpu_features",
        []() {
            py::dict out;  // insertion-ordered, so the key order is the one in cpu_features.cpp
            for (const auto& kv : qrt::cpu_feature_list()) out[py::str(kv.first)] = kv.second;
            return out;
        },
        "dict[str, bool]: ISA features that the CPU has and the OS enabled (cpuid + xgetbv).");

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
