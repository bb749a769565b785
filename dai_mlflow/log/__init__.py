"""Turning a DAI pipeline into a logged MLflow model: what ``mlflow run`` runs, in the project env.

Data flows one way: :mod:`.pipeline` (read and validate the folder or zip) →
:mod:`.requirements` (sanitize) and :mod:`.signature` (schema, example) → :mod:`.run` (stage the
model folder, add the wheels of :mod:`.model_wheels`, check it in its own env with
:mod:`.check_model`, log, register) ← :mod:`.entry` (the ``main`` entry point's command line).
Runs on the project env's Python (3.8 with MLflow 2.17, or 3.11 with MLflow 3).
"""
