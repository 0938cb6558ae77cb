// The Python module eitp_kernels._C is an empty stub: importing it loads this
// shared library, whose static initializers register the eitp:: operators
// with the PyTorch dispatcher (the pattern of pytorch/extension-cpp).
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The library itself; each op adds its schema with TORCH_LIBRARY_FRAGMENT in
// its own binding file.
TORCH_LIBRARY(eitp, m) {}
