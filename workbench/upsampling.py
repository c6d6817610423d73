"""Kept for plugins written against the old docs (`from workbench.upsampling import ...`); new code imports from `workbench`."""

from .models import upsampling as _impl
from .models.upsampling import *  # noqa: F401,F403  (the names of its __all__)


def __getattr__(name: str):  # anything else the old module had (e.g. a class outside __all__)
    return getattr(_impl, name)
