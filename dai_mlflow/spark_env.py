"""Deprecated, kept one release: `python -m dai_mlflow.spark_env` is `envs.spark_venv`."""

if __name__ == "__main__":
    from dai_mlflow.deprecated import run_renamed

    run_renamed("dai_mlflow.spark_env", "dai_mlflow.envs.spark_venv")
