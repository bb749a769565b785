"""Errors of the lifecycle entry points (one line each, with the fix)."""

from __future__ import annotations

from dai_mlflow.errors import DaiMlflowError


class LifecycleError(DaiMlflowError):
    """A lifecycle step cannot run as asked (bad input, missing alias, unreadable table)."""


class ModelFailedError(LifecycleError):
    """A model failed to score in its own env; the message is the model's error."""


class DeployError(LifecycleError):
    """A deployment step failed; the endpoint still serves what it served before."""


class SmokeTestError(DeployError):
    """A served version did not answer its sample as validated (the message says how)."""
