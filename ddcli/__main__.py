"""``python -m ddcli`` and the ``ddcli`` console script.

Nothing heavy is imported before the interrupt handling is in place: Ctrl-C during start-up
(while torch and friends import, the first seconds of every command) ends with one ``error:``
line and exit code 130, not a traceback.
"""

import sys


def main() -> None:
    try:
        from ddcli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # before the CLI's own handling is installed, or after it
        try:
            sys.stderr.write("error: interrupted\n")
            sys.stderr.flush()
        finally:
            sys.exit(130)


if __name__ == "__main__":
    main()
