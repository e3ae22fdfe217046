__version__ = "0.1.0"

# `import petseg` exposes the whole library in the course's order; the command line lives in petseg.cli.
import sys as _sys
from .data import *
from .augment import *
from .models import *
from .losses import *
from .train import *
from .evaluate import *
from .inference import *
from .viz import *

# `train` and `evaluate` name both a submodule and its main function: here they stay the submodules, so that
# `import petseg.train as T` and `petseg.train.TrainConfig` work. Call `petseg.train.train(config)` and
# `petseg.evaluate.evaluate(...)`, or `from petseg.all import *` for the bare functions.
train, evaluate = _sys.modules[__name__ + ".train"], _sys.modules[__name__ + ".evaluate"]
