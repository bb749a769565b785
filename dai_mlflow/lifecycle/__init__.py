"""Registry lifecycle around a logged DAI model: champion/challenger gate, batch scoring, drift.

Three MLflow Project entry points (``MLproject``), each a thin click command in
:mod:`dai_mlflow.lifecycle.cli` over one library function:

- ``validate`` (:mod:`.validate`): score ``@challenger`` and ``@champion`` on a labelled holdout,
  log their metrics, move ``champion`` to the challenger only when it is better;
- ``batch`` (:mod:`.batch`): score ``@champion`` with Spark and replace one date partition of a
  parquet table (:mod:`.tables`); the Spark side is :mod:`.batch_job`;
- ``monitor`` (:mod:`.monitor`): per-feature and prediction drift of recent table partitions
  against the training baseline (:mod:`.drift`), written to a monitoring table.

The entry points run in the project env (Python 3.8 / mlflow 2.17 by default, no pyspark) or in
``venvs/launcher``; model code always runs in the model's own env, in a subprocess. Run them with
``mlflow run . -e validate|batch|monitor -P ...`` or ``python -m dai_mlflow.lifecycle ...``.
Python 3.8-safe; not model-side.
"""
