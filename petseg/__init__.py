__version__ = "0.1.0"

# `import petseg` exposes the whole library in the course's order (see petseg/all.py); the command line lives in petseg.cli.
from .all import *
