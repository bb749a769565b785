"""dai-mlflow: H2O Driverless AI scoring pipelines as MLflow pyfunc models (see README.md)."""
