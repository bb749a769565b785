"""How every dai-mlflow command line runs: click, one error line, one exit code.

:func:`run_click` runs a ``click.Command`` and turns a :class:`~dai_mlflow.errors.DaiMlflowError`
(or ``click.ClickException``) into ``Error: <one line>`` on stderr and exit 1 (2 for usage
errors), with no traceback. Only interpreters without click use argparse (the host Python that
builds the first venv, the servers in model envs); they print the same line. Python 3.8-safe.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import click

from dai_mlflow.errors import DaiMlflowError, report_error

HELP = {"help_option_names": ["-h", "--help"]}


def echo_fields(**fields: object) -> None:
    """Print one ``key=value`` line a field: the summary scripts and tests read back."""
    for key, value in fields.items():
        click.echo(f"{key}={value}")


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


def entry_point(command: click.Command) -> Callable[..., int]:
    """``main(argv=None) -> exit code`` running ``command``: what ``__main__`` and console
    scripts call."""

    def main(argv: Optional[Sequence[str]] = None) -> int:
        return run_click(command, argv)

    main.__doc__ = f"``{command.name}``: run it with ``argv``; return its exit code."
    return main
