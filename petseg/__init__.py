__version__ = "0.1.0"

# `import petseg` exposes the whole library in the course's order; the command line lives in petseg.cli.
from .data import *
from .augment import *
from .models import *
from .losses import *
from .learner import *
from .checkpoint import *
from .callbacks import *
from .distributed import *
from .training import *
from .evaluate import *
from .inference import *
from .viz import *
