"""eov_edge.export: the model split into encoder, projector and decoder ONNX graphs with a manifest
(``onnx_export``), their validation against PyTorch (``validate``), and TensorRT engine plans, builds
and trtexec scripts for Jetson and ground-station GPUs (``engine_plan``, ``tensorrt_build``)."""
