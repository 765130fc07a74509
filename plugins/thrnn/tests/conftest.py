from __future__ import annotations

import torch

# The tests' matrices are tiny: extra threads only add synchronisation (and suffer most when
# other processes share the cores).
torch.set_num_threads(1)
