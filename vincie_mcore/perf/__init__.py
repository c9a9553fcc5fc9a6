"""Performance measurements of the library's own pieces on a GPU (a CPU smoke path for each):
``bench_layers`` times an MM-DiT layer stack. The attention kernel's benchmarks need only the
kernels and live with them (``vincie_kernels.bench``, ``vincie_kernels.tune``)."""
