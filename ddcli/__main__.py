"""``python -m ddcli`` and the ``ddcli`` console script.

Nothing heavy is imported before the interrupt handling is in place: Ctrl-C during start-up
(while torch and friends import, the first seconds of every command) ends with one ``error:``
line and exit code 130, not a traceback.

Once the command has finished, a late Ctrl-C (during the interpreter's shutdown, which takes a
moment after torch) is ignored: the work is done and the exit code already says how it went. An
interrupted run leaves through ``os._exit(130)`` after flushing its output, because CPython
remembers a KeyboardInterrupt that passed through some import machinery and would otherwise end
the process by SIGINT (exit status -2) despite ``sys.exit(130)``.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # ddcli.errors.EXIT_INTERRUPTED, not imported: nothing before the guard


def _finish(code) -> None:
    """Exit with ``code`` (SIGINT is already ignored: see :func:`main`)."""
    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing more to say
                pass
        os._exit(EXIT_INTERRUPTED)
    sys.exit(code)


def main() -> None:
    code = 0
    try:
        try:
            from ddcli.cli import main as cli_main

            cli_main()
        finally:  # from here on, Ctrl-C no longer changes the outcome
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            except (ValueError, OSError):  # not the main thread / no signals here
                pass
    except KeyboardInterrupt:  # before the CLI's own handling is installed
        sys.stderr.write("error: interrupted\n")
        code = EXIT_INTERRUPTED
    except SystemExit as e:
        code = e.code
    _finish(code)


if __name__ == "__main__":
    main()
