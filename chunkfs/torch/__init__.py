"""chunkfs.torch: checkpoints written from the training processes straight into a repository.

``Writer`` / ``Reader`` are storage writer and reader of torch.distributed.checkpoint::

    import torch.distributed.checkpoint as dcp
    import chunkfs.torch

    dcp.save(state, storage_writer=chunkfs.torch.Writer("/models/llama/run1/step-1000"))
    dcp.load(state, storage_reader=chunkfs.torch.Reader("/models/llama/run1/step-1000"))

Needs torch (``pip install chunkfs[torch]``). docs/torch.md says more.
"""

from chunkfs.torch.dcp import Reader, Writer

__all__ = ["Reader", "Writer"]
