from __future__ import annotations

import torch

# The tests' matrices are tiny: extra threads only add synchronisation.
torch.set_num_threads(1)
