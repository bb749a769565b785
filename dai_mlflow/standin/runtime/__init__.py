"""Sources of the stand-in runtime wheel (``h2oaicore``) that the builder packs into pipelines.

Nothing in the product imports this package; the builder reads these files as bytes and also
uses :mod:`.h2oaicore.engine` in-process to train and evaluate, so training and scoring share
one feature-engineering code path.
"""
