__version__ = "0.1.0"

def _run_as_command() -> bool:
    "Whether this process is the `petseg` command (the console script or `python -m petseg`), not a Python session."
    import os, sys
    argv = getattr(sys, "orig_argv", sys.argv)
    return os.path.splitext(os.path.basename(sys.argv[0]))[0] == "petseg" or any(
        a == "-m" and b == "petseg" for a, b in zip(argv, argv[1:]))

# `import petseg` exposes the whole library in the course's order (see petseg/all.py); the command line lives in petseg.cli.
try: from .all import *
except KeyboardInterrupt:    # Ctrl-C while the command was still starting (importing torch takes seconds)
    if not _run_as_command(): raise
    import sys
    print("petseg: stopped by Ctrl-C while starting", file=sys.stderr)
    raise SystemExit(130) from None
