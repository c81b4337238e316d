"""eov_edge.export: split the model into encoder, projector and decoder ONNX graphs, and
TensorRT engine plans (see ../shared/docs/DESIGN.md sections 5 and 7). Not built yet."""
