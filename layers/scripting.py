"""``torch.jit.script`` of models that hold this package's layers.

TorchScript cannot compile this package's forward passes (they dispatch between backends, nested tensors and
packed paths in Python). So, through the hook torch provides for exactly this (``__prepare_scriptable__``), each
layer hands TorchScript its ``torch.nn`` twin: the very same module object (same parameters, buffers and hooks)
with its class switched to a subclass of the torch class, whose ``forward`` TorchScript compiles. The switch
lasts until the module is next called eagerly: that call switches it back first. So::

    scripted = torch.jit.script(model)   # torch's math, this package's weights
    model(x)                             # still this package's layers

Only the package's own classes are switched; a user's subclass with its own ``forward`` is scripted as it is.
"""

from __future__ import annotations

import weakref

import torch.nn as nn

__all__ = ["TorchScriptable"]

_original: weakref.WeakKeyDictionary[nn.Module, type] = weakref.WeakKeyDictionary()
_twins: dict[type, type] = {}


def _switch_back_and_call(self, *args, **kwargs):
    """The first eager call after scripting: become this package's class again, then run as usual."""
    self.__class__ = _original.pop(self)
    return self(*args, **kwargs)


def twin_class(torch_class: type) -> type:
    """The subclass of ``torch_class`` a module takes while TorchScript compiles it (torch's forward)."""
    if torch_class not in _twins:
        namespace = {"__call__": _switch_back_and_call, "__module__": __name__, "__doc__": torch_class.__doc__}
        _twins[torch_class] = type(f"Scripted{torch_class.__name__}", (torch_class,), namespace)
    return _twins[torch_class]


def _torch_class(cls: type) -> type:
    return next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn"))


class TorchScriptable:
    """Mixin: ``__prepare_scriptable__`` hands TorchScript the module as its ``torch.nn`` class (see the module)."""

    _scripted_as: type | None = None  # the scriptable class, where it is not a torch.nn class (CausalSelfAttention)

    def __prepare_scriptable__(self):
        cls = type(self)
        if cls.__module__.split(".")[0] != "layers":  # a user's subclass: its own forward, scripted as it is
            return self
        _original[self] = cls
        self.__class__ = twin_class(cls._scripted_as or _torch_class(cls))
        return self
