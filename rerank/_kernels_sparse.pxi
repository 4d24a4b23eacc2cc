# Compiled kernels of the sparse attention mechanisms (included by _kernels.pyx).
