"""``python -m eov_edge.training``: ``eov-train``, also as torchrun starts it (``torchrun ... -m eov_edge.training``)."""

from eov_edge.training.cli import train_main

if __name__ == "__main__":
    train_main(prog_name="eov-train")
