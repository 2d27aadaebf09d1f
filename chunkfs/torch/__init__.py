"""chunkfs.torch: checkpoints written from the training processes straight into a repository.

``Writer`` / ``Reader`` are storage writer and reader of torch.distributed.checkpoint::

    import torch.distributed.checkpoint as dcp
    import chunkfs.torch

    dcp.save(state, storage_writer=chunkfs.torch.Writer("/models/llama/run1/step-1000"))
    dcp.load(state, storage_reader=chunkfs.torch.Reader("/models/llama/run1/step-1000"))

``save`` / ``load`` and ``save_file`` / ``load_file`` are ``torch.save`` / ``torch.load`` and
safetensors' pair for single-process code, written and read by the calling process.

Needs torch (``pip install chunkfs[torch]``). docs/torch.md says more.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # say what to install, not only which module is missing
    raise ImportError("chunkfs.torch needs PyTorch: pip install 'chunkfs[torch]'") from e

from chunkfs.torch.dcp import Reader, Writer
from chunkfs.torch.single import load, load_file, save, save_file

__all__ = ["Reader", "Writer", "load", "load_file", "save", "save_file"]
