"""Optional integrations with training frameworks (each needs its own extra):

* ``eitp_kernels.integrations.lightning.EntropyMonitorCallback`` (PyTorch
  Lightning; ``pip install 'eitp-kernels[lightning]'``).
"""
