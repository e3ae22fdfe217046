"Everything in one import, fastai style: `from petseg.all import *` (gives the functions `train` and `evaluate`)."
from .data import *
from .augment import *
from .models import *
from .losses import *
from .train import *
from .evaluate import *
from .inference import *
from .viz import *
