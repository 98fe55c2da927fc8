"""`refimpl.nn.functional` is `refimpl.functional`, under torch's module path."""

from refimpl.functional import *  # noqa: F403
from refimpl.functional import __all__  # noqa: F401
