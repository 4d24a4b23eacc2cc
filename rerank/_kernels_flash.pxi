# Compiled kernels of the flash attention mechanisms (included by _kernels.pyx).
