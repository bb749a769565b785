"""How every dai-mlflow command line runs: click, one error line, one exit code.

A command is a ``click.Command`` whose body raises :class:`~dai_mlflow.errors.DaiMlflowError`
(or ``click.ClickException``) for expected failures; :func:`run_click` runs it and turns those
into ``Error: <one line>`` on stderr and exit status 1 (2 for usage errors, as click does), with
no traceback. Only interpreters without click use argparse: the host Python that builds the first
venv (:mod:`dai_mlflow.envs.venvs`, :mod:`dai_mlflow.envs.pythons`) and the servers inside model
envs (:mod:`dai_mlflow.model.hooks`); they print the same ``Error:`` line.

Python 3.8-safe (the project env runs it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import click

from dai_mlflow.errors import DaiMlflowError, report_error

HELP = {"help_option_names": ["-h", "--help"]}


def run_click(command: click.Command, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``command`` with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    try:
        result = command.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.UsageError as e:
        e.show()
        return e.exit_code
    except click.ClickException as e:
        return report_error(e.format_message())
    except DaiMlflowError as e:
        return report_error(e)
    except click.exceptions.Abort:
        return 1
    return result if isinstance(result, int) else 0
