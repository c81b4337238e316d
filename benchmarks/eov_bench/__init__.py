"""``eov-bench`` and ``eov-demo``: the application that measures the runtime against PyTorch eager
and ONNX Runtime GenAI, and the demo that runs the whole chain. Installed as ``eov_edge.bench``; it
sits above every other layer and nothing in the product imports it."""
