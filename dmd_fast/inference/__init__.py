"""Inference on a trained DMD: a model from a checkpoint (``loading``), batch prediction over a data
split with CSV and metrics (``predict``, behind ``dmd-fast predict``), and ``torch.export`` of the
pruned inference forward with its loader (``export``, behind ``dmd-fast export``)."""
