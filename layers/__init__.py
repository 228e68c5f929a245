"""Drop-in torch.nn transformer layers on the fused attention of :mod:`kernels`.

The layers (``MultiheadAttention``, ``TransformerEncoderLayer``, ...) arrive with their own issue; this
package never imports triton.
"""

__all__: list[str] = []
