"""The robustness lab: how the exported models behave under shifts, common corruptions and
frequency filtering, measured on their ONNX files (numpy, Pillow and onnxruntime; no torch).

* ``transforms`` - :func:`shift` (circular / zero-padded), :func:`low_pass`, :func:`high_pass`
* ``corruptions`` - :func:`corrupt`: CIFAR-10-C-style corruptions at five severities
* ``stats`` - counts and their 95 % intervals
* ``report`` - :func:`prepare` (the transformed inputs, once) and :func:`score` (one model), plans
  sized for a precision (:func:`plan_for`), the ``robustness.json`` file beside the models, tables
* ``probe`` - one upload, transformed step by step, for the dashboard's per-upload view
* ``python -m robustness MODELS_DIR`` - (re)computes ``MODELS_DIR/robustness.json``

The package stands on ``serving`` only; ``exports.ingest`` and the dashboard use it.
"""
