"""rhn_np: Recurrent Highway Networks in NumPy, with hand-written BPTT and a CuPy backend.

Modules, in the order they import each other (imports go one way)
------------------------------------------------------------------
interrupts Ctrl+C and SIGTERM: the exception and exit status (standard library only)
backend    array libraries (NumPy, CuPy, array-api-strict) and host/device crossings
checks     every argument check
fast       the fused fast path of the RHN layer (loop; gates: every non-reference copy of
           the gate maths; cublas: cuBLAS through ctypes)
rhn        the RHN layer: Eqs. 6-9 forward, backpropagation through time (the reference)
dtrnn      the deep-transition RNN and DT(S)-RNN of Pascanu et al. (2013), the baselines
cells      the cells by name ("rhn", "dt_rnn", "dts_rnn"), parameter counts and budgets
graphs     CUDA-graph capture of the RHN fast path
lm         language-model pieces: stacked layers of any cell, embedding, dropout masks, losses
optim      gradient clipping, SGD with the authors' L2 term, Adam, learning-rate schedules
gradcheck  numerical gradient checkers used by the tests and notebooks
checkpoint atomic .npz checkpoints, read without pickle
data       the data sets (PTB, PTB-char, text8, enwik8, JSB, pydoc): files, downloads, checksums
config     the settings of a run (one declaration per hyper-parameter) and the presets
tasks      batching, the model of a data set, evaluation, sampling; token and piano-roll tasks
runs       a run on disk: work folder, metrics, checkpoints, load_run
train      the training loop (the authors' recipe)
theory     temporal Jacobians of any cell, Gersgorin discs, spectra (Eqs. 2-4, 10-15)
plots      matplotlib helpers for the theory figures
sweep      sweeps of many training runs on Dask (the paper's Fig. 4 and depth table)
cli        the ``rhn-np`` command line
__main__   its entry point (``python -m rhn_np``), Ctrl+C and SIGTERM handled from the start
"""

__version__ = "0.1.0"
