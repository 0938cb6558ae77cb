"""The Triton backend: one module per op (``entropy``, ``coherence``, ``quant``,
``finite_minmax``, ``int8_linear``) holding its Triton kernels and the launchers that allocate
outputs and launch them through :func:`eitp_kernels._triton.launch`, as
``csrc/cpu`` and ``csrc/cuda`` hold the compiled backends' kernels. The op
modules in :mod:`eitp_kernels.ops` validate, dispatch and register the
launchers as custom ops.

Not to be confused with the ``triton`` package itself: modules here import it
through :mod:`eitp_kernels._triton` (absolute imports only), and importing
this package compiles nothing.
"""
