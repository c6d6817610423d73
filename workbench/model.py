"""Kept for plugins written against the old docs (`from workbench.model import ...`); new code imports from `workbench`."""

from .models import base as _impl
from .models.base import *  # noqa: F401,F403  (the names of its __all__)


def __getattr__(name: str):  # anything else the old module had (e.g. a class outside __all__)
    return getattr(_impl, name)
