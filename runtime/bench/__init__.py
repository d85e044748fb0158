"""qrt's benchmark suite (`qrt bench`): the engine that times kernels and models, and the
report side that describes the machine and writes what was measured.

machine.py   fingerprint(): CPU, ISA, BLAS, versions, measured peaks; openblas_reexec()
progress.py  Progress: a dependency-free progress line for long sweeps
report.py    the "qrt-bench/1" result schema: validate(), Markdown, JSON and plots
"""
