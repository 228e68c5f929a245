"""Exceptions that are both what ``torch.nn`` raises and what this package documents.

``torch.nn``'s transformer layers report bad arguments with ``AssertionError`` (e.g. ``embed_dim`` not divisible
by ``num_heads``, a ``uint8`` key padding mask) or ``RuntimeError`` (an ``attn_mask`` of the wrong shape), while
this package's messages name the argument, the value and the fix and are ``ValueError``/``TypeError``. Each class
below subclasses both, so code written against torch (``except AssertionError:``) and code written against this
package (``except ValueError:``) both keep working.

Example, run by the test suite:

```python
import pytest
import layers

with pytest.raises(AssertionError):  # what torch raises
    layers.MultiheadAttention(10, 3)
with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=3"):  # what we document
    layers.MultiheadAttention(10, 3)
```
"""

from __future__ import annotations

__all__ = ["ArgumentError", "ArgumentTypeError", "RuntimeArgumentError"]


class ArgumentError(ValueError, AssertionError):
    """A bad argument value where torch asserts (``except ValueError`` and ``except AssertionError`` both catch it)."""


class ArgumentTypeError(TypeError, AssertionError):
    """An argument of the wrong type or dtype where torch asserts (``TypeError`` and ``AssertionError``)."""


class RuntimeArgumentError(ValueError, RuntimeError):
    """A bad argument where torch raises ``RuntimeError`` (an ``attn_mask`` of the wrong shape, an unknown activation
    name): ``except ValueError`` and ``except RuntimeError`` both catch it."""
