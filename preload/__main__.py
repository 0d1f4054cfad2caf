"""``python -m preload`` and the ``preload`` command: :func:`preload.cli.main` in a process of its own.

The command line's modules (NumPy, OpenCV, the cache) load inside
:func:`main`, so a Ctrl-C while they load (seconds, on a cold disk) ends the
way one during the work does: ``preload: interrupted`` on stderr and exit
130, not a traceback. ``import preload`` itself loads none of them.
"""

import signal
import sys

# What preload.cli.main ends an interrupted command with (a test holds them equal);
# repeated here because importing preload.cli is the very thing a Ctrl-C may cut short.
INTERRUPTED_LINE = "preload: interrupted"
EXIT_INTERRUPTED = 130


def main() -> int:
    """Run the command on ``sys.argv``; the exit code (see the table in :mod:`preload.cli`)."""
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # NumPy turns a Ctrl-C that lands inside its C-extension import into an
    # ImportError ("PyCapsule_Import could not import module 'datetime'"), so the
    # signal itself is noted here to tell that apart from a broken install.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        from .cli import main as run_command

        code = run_command()
    except (KeyboardInterrupt, ImportError) as exc:  # while the command's modules were still loading
        if isinstance(exc, ImportError) and not interrupted:
            raise
        try:
            print(INTERRUPTED_LINE, file=sys.stderr)
        except (OSError, KeyboardInterrupt):
            pass
        code = EXIT_INTERRUPTED

    # The command is over. A Ctrl-C from now on (while the interpreter joins the decoding
    # threads and flushes) ends the process at once, like any command's, without a traceback.
    # Only Python's own handler is replaced: a SIGINT ignored from the start (a job started
    # in the background) stays ignored.
    if signal.getsignal(signal.SIGINT) is on_sigint:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code


if __name__ == "__main__":
    sys.exit(main())
