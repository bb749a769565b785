"""Deprecated, kept one release: `python -m dai_mlflow.venvs` runs `dai_mlflow.envs.venvs`."""

if __name__ == "__main__":
    from dai_mlflow.deprecated import run_renamed

    run_renamed("dai_mlflow.venvs", "dai_mlflow.envs.venvs")
