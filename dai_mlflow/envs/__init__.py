"""Finding Pythons and building envs, offline: wherever an env is needed.

:mod:`.pythons` (local interpreters by version), :mod:`.venvs` (venvs keyed by a hash of their
spec), :mod:`.wheelhouse` (pyspark built into a wheel once), :mod:`.model_env` (*the* builder of
a logged model's env), :mod:`.spark_venv` (``make spark-venv``), :mod:`.offline` (MLflow's own
env managers, offline), :mod:`.processes`, :mod:`.installers`, :mod:`.locks`.
See docs/model-envs.md.
"""
