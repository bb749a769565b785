"""``deploy``: move a serving endpoint to the version ``NAME@champion`` points at.

:mod:`.run` (resolve, dispatch, record) over the targets :mod:`.local` (a front proxy on a stable
port: :mod:`.state`, :mod:`.servers`, :mod:`.proxy`, :mod:`.admin`; smoke test :mod:`.smoke`)
and :mod:`.databricks`; the types are in :mod:`.request`. Imports nothing: the proxy process
imports this package and must stay stdlib-only. The story: docs/deploy.md.
"""
