"""Registry lifecycle around a logged DAI model: ``validate``, ``deploy``, ``batch``, ``monitor``.

Laid out by stage: :mod:`.validate`, :mod:`.batch` (+ :mod:`.batch_job`, the Spark side),
:mod:`.monitor` (+ :mod:`.drift`), :mod:`.deploy` (subpackage), :mod:`.reports` (pictures and
pages); :mod:`.cli` is the command line (``python -m dai_mlflow.lifecycle ...``, ``MLproject``).
Runs in the project env or ``venvs/launcher``; model code only in the model's own env (a
subprocess). Python 3.8-safe; not model-side. The story: docs/lifecycle.md, docs/deploy.md.
"""
