"""Serving images: ``dai-mlflow image build`` builds a Docker image per DAI version, offline.

:mod:`.build` (the command's work), :mod:`.context` (the build context and Dockerfile),
:mod:`.entry` (the entry point inside the image, stdlib only), :mod:`.cli` (``dai-mlflow``).
See docs/image.md.
"""
