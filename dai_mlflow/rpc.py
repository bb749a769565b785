"""Deprecated, kept one release: `python -m dai_mlflow.rpc` runs `dai_mlflow.serve.rpc`."""

if __name__ == "__main__":
    from dai_mlflow.deprecated import run_renamed

    run_renamed("dai_mlflow.rpc", "dai_mlflow.serve.rpc")
