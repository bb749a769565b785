"""Deprecated, kept one release: `python -m dai_mlflow.pythons` runs `dai_mlflow.envs.pythons`."""

if __name__ == "__main__":
    from dai_mlflow.deprecated import run_renamed

    run_renamed("dai_mlflow.pythons", "dai_mlflow.envs.pythons")
