"`python -m petseg ...` runs the command line (as `torchrun -m petseg train ...` does on each process)."
import sys

from petseg.cli import main

sys.exit(main())
