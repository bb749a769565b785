"""Serving a logged model from its own env: MLflow's REST API and DAI's JSON-RPC.

* :mod:`.server`: ``python -m dai_mlflow.serve`` (``mlflow models serve`` by the model env's own
  MLflow, after restoring that env offline) and the process helpers tests and benchmarks use;
* :mod:`.rpc`: ``python -m dai_mlflow.serve.rpc``, DAI's ``http_server.py`` protocol.

Runs from ``venvs/launcher``; :mod:`.rpc` also in the model env (``--env-manager local``).
"""
