"""qrt kernels: a numpy reference for every op (kernels.reference) and fast backends that
register themselves in kernels.registry. Nothing outside the registry imports a backend."""
