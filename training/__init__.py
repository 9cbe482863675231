"""Training, sweeps and reports for the CIFAR ResNet-18 variants of ``hybrid_model``.

* ``training.data`` - CIFAR-10/100 loading (torchvision folders; the shared JPEG copy and the
  bit-exact partial arrays through the torch-free ``serving.cifar_data``), ``normalize`` and
  the on-device ``GpuLoader``;
* ``training.config`` - ``TrainConfig``: every training setting, typed; the CLI, the resume
  check, the card's ``config`` and the sweep's flags derive from it;
* ``training.train`` - ``python -m training.train``: one run (SGD, piecewise / one-cycle
  schedules, DDP under torchrun, atomic checkpoints, exact ``--resume``);
* ``training.sweep`` - ``python -m training.sweep --config X.json``: grids of runs and the
  papers' results table;
* ``training.report`` - tables and plotly figures from model cards (shared with the dashboard);
* ``training.tables`` - Markdown tables of measured speeds (the benchmarks and ``exports.ingest``);
* ``training.checkpoint`` - the files of a run (card + weights + resume state), ``load_checkpoint``,
  ``save_checkpoint`` and ``fresh_checkpoint``.
"""
