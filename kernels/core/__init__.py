"""The floor of qrt: the vocabulary kernels and runtime share (packed layouts, op specs, device
arrays, numeric bounds, CPU identity, QRT_* configuration). Modules here import numpy and the
standard library only, never kernels' backends or the registry, never runtime: every other qrt
module may import them (tests/test_layering.py holds this)."""
