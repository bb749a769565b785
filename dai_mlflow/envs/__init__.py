"""Finding Pythons and building envs, offline: wherever an env is needed.

* :mod:`.pythons`: local interpreters by version (PATH, pyenv, uv, ``DAI_MLFLOW_PYTHON_X_Y``);
* :mod:`.venvs`: venvs keyed by a hash of their spec, reused, rebuilt, never half-built;
* :mod:`.wheelhouse`: source-only pins (pyspark) built into wheels once;
* :mod:`.model_env`: *the* builder of a logged model's own env (logging, lifecycle, Spark);
* :mod:`.spark_venv`: ``venvs/spark_inference`` for one model (``make spark-venv``);
* :mod:`.offline`: tool folders that let MLflow's own uv/virtualenv managers work offline;
* :mod:`.processes`: what a child of another Python must not inherit, and how it ends.
"""
