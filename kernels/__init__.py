"""qrt kernels: a numpy reference for every op (kernels.reference) and fast backends that
register themselves in kernels.registry. Nothing outside the registry imports a backend."""

from kernels.core import threads as _threads

# Before any backend (or anything it imports) loads an OpenMP runtime: kernels/core/threads.py.
_threads.configure_openmp()
