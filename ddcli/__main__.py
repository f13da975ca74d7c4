"""``python -m ddcli`` and the ``ddcli`` console script.

Nothing heavy is imported before the interrupt handling is in place: Ctrl-C during start-up
(while torch and friends import, the first seconds of every command) ends with one ``error:``
line and exit code 130, not a traceback. A Ctrl-C that arrives while a module is being imported
is held until that import is over (:func:`_on_sigint`): raised inside it, the KeyboardInterrupt
left numpy half-loaded ("cannot load module more than once per process", exit 1) or escaped
through torch's C++ (``std::terminate``, exit -6).

Once the command has finished, or printed its error line, a late Ctrl-C (during the
interpreter's shutdown, which takes a moment after torch) is ignored: the work is done and the
exit code already says how it went. An
interrupted run leaves through ``os._exit(130)`` after flushing its output, because CPython
remembers a KeyboardInterrupt that passed through some import machinery and would otherwise end
the process by SIGINT (exit status -2) despite ``sys.exit(130)``.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # ddcli.errors.EXIT_INTERRUPTED, not imported: nothing before the guard


def _finish(code) -> None:
    """Exit with ``code`` (SIGINT is already ignored: see :func:`main`).

    A process of a torchrun group leaves through ``os._exit`` too, once its output is flushed
    and its group left (every rank waits for the others first): the interpreter's and C++'s
    teardown of gloo's threads could abort it afterwards ('terminate called without an active
    exception', exit -6), after the work was done and written, and torchrun then reported the
    whole run as failed."""
    if code == EXIT_INTERRUPTED or _in_process_group():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing more to say
                pass
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    sys.exit(code)


def _in_process_group() -> bool:
    """Whether this process joined a torchrun group (``ddcli.distributed`` records it: the
    group is left before the end, so ``is_initialized()`` is False by then)."""
    return bool(getattr(sys.modules.get("ddcli.distributed"), "joined_a_group", False))


def _in_import(frame) -> bool:
    """Whether ``frame`` runs inside an import (CPython's frozen importlib is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: a KeyboardInterrupt now, or, inside an import, as soon as the import is over
    (checked every 20 ms by SIGALRM, which passes the signal on to whatever handles SIGINT then:
    this function again, or a distillation loop's own handler)."""
    if _in_import(frame):
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    raise KeyboardInterrupt


def _on_alarm(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)


def _guard_sigint() -> None:
    """Install :func:`_on_sigint` (where the platform has timers; Python's default otherwise),
    for SIGTERM too (``timeout``, a batch scheduler): outside the loops that finish their step
    on it, it ended the process at once, exit 143 without a word, where Ctrl-C says
    "interrupted" and exits 130. Not under a launcher (WORLD_SIZE set): a Python handler runs
    only between C++ calls, and joining a torchrun group blocks in one for up to 30 minutes,
    where torchrun's SIGTERM must end the process (the group's own handler follows the join)."""
    if hasattr(signal, "setitimer"):
        try:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.signal(signal.SIGINT, _on_sigint)
            if "WORLD_SIZE" not in os.environ:
                signal.signal(signal.SIGTERM, _on_sigint)
        except (ValueError, OSError):  # not the main thread / no signals here
            pass


def _unguard_sigint() -> None:
    """From here on Ctrl-C changes nothing: ignore it, and drop a held one (SIGTERM ends the
    process as by default again)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signal.getsignal(signal.SIGTERM) is _on_sigint:  # (not a torchrun group's handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
    except (ValueError, OSError):  # not the main thread / no signals here
        pass


def main() -> None:
    code = 0
    _guard_sigint()
    try:
        try:
            import ddcli.cli.common
            from ddcli.cli import main as cli_main

            ddcli.cli.common.on_outcome = _unguard_sigint  # its error line decides
            cli_main()
        finally:  # from here on, Ctrl-C no longer changes the outcome
            _unguard_sigint()
    except KeyboardInterrupt:  # before the CLI's own handling is installed
        sys.stderr.write("error: interrupted\n")
        code = EXIT_INTERRUPTED
    except SystemExit as e:
        code = e.code
    _finish(code)


if __name__ == "__main__":
    main()
