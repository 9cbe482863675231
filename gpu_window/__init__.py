"""The GPU-window runbook (``python -m gpu_window MODE``; docs/gpu-window.md): one 15-minute
window on the device machine, at most two device calls that train, compress and measure,
prepared here before it and ingested here after it (``python -m exports.ingest``).

* ``travel`` - here: what a device call carries and returns, the data it carries, the
  scratch branch (``prepare`` / ``restore``)
* ``record`` - the ``Window`` record and log of one call, the work folders, ``WindowError``
* ``plan`` - the short protocol, what fits a budget, the grid's undone points
* ``runs`` - the smoke, the training processes, int8 compression and its accuracy
* ``bench`` - time-boxed benchmark subprocesses (the profiler step, ``extra``'s benchmarks)
* ``probe`` - which protocol setting costs accuracy, and the verdict ``models --args-from`` reads
* ``prestudy`` - ``python -m gpu_window.prestudy``: the probe's settings ranked on the CPU first
* ``__main__`` - the modes and their command line

It stands on ``training``, ``exports``, ``benchmarks`` (the smoke's step timer) and
``serving``; no package imports it. Importing any of its modules loads no torch (a window is
prepared and planned without it): the torch side is imported inside the functions that need
it, marked ``# torch-free boundary``.
"""
