"""One module per op: Triton kernels, launcher, custom-op registration, fake
kernels and autograd for that op. The public functions are re-exported from
``eitp_kernels``."""
