"""One module per op: the public functions, their argument checks, the
choice of backend for each call, and the custom-op registration (fake kernels,
autograd, the Triton ops). Every module has the same sections in the same
order: public functions, validation, backends, custom ops. The Triton kernels
and launchers are in ``eitp_kernels.triton``. The public functions are
re-exported from ``eitp_kernels``."""
