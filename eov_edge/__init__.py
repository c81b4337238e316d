"""eov-edge: the Earth-OneVision reference model and its edge deployment toolchain.

This top-level package stays light (no torch, no transformers): the device runtime imports
``eov_edge.core.bands``, ``eov_edge.core.slis``, ``eov_edge.core.prompt`` ... through it. The PyTorch model lives in
``eov_edge.model`` and is imported only by code that needs it.
"""

__version__ = "0.1.0"
