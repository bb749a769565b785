"""The pictures and HTML pages of ``validate`` and ``monitor``, and logging them to the run
(:mod:`.plots`, :mod:`.page`, :mod:`.publish`). What each run gets: docs/lifecycle.md."""
