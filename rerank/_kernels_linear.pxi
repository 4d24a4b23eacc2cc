# Compiled kernels of the linear attention mechanisms (included by _kernels.pyx).
