"Everything in one import, in the course's order: `from petseg.all import *`."
from .data import *
from .synthetic import *
from .download import *
from .cache import *
from .augment import *
from .models import *
from .losses import *
from .palette import *
from .learner import *
from .checkpoint import *
from .callbacks import *
from .distributed import *
from .config import *
from .training import *
from .evaluate import *
from .inference import *
from .viz import *
