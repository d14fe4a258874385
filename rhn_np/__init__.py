"""rhn_np: Recurrent Highway Networks in NumPy, with hand-written BPTT and a CuPy backend.

Modules
-------
backend    array libraries (NumPy, CuPy, array-api-strict) and host/device crossings
rhn        the RHN layer: Eqs. 6-9 forward, backpropagation through time
fast       the fused fast path of the layer (CuPy kernels, preallocated buffers)
lm         language-model pieces: embedding, dropout masks, softmax, losses
optim      gradient clipping, SGD with the authors' L2 term, Adam
gradcheck  numerical gradient checkers used by the tests and notebooks
checkpoint atomic .npz checkpoints, read without pickle
data       the data sets (PTB, PTB-char, text8, enwik8, JSB, pydoc): files, downloads, checksums
train      batching, the authors' training recipe, evaluation, sampling, runs on disk
theory     temporal Jacobians, Gersgorin discs, spectra (the paper's Eqs. 2-4, 10-15)
plots      matplotlib helpers for the theory figures
cli        the ``rhn-np`` command line
"""

__version__ = "0.1.0"
