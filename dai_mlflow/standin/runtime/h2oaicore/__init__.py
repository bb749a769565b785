"""Stand-in for DAI's core runtime wheel, written for the dai-mlflow project (no H2O code).

It holds what every stand-in experiment wheel shares: the license check
(:mod:`h2oaicore.licensing`) and the scoring engine (:mod:`h2oaicore.engine`). Python 3.8+,
numpy and pandas only.
"""

__version__ = "0+standin"
STANDIN_NOTICE = (
    "dai-mlflow stand-in for a Driverless AI scoring runtime; written for the dai-mlflow "
    "project, contains no H2O.ai code"
)
