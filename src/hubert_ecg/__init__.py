"""HuBERT-ECG: a self-supervised foundation model for 12-lead ECGs.

>>> import hubert_ecg
>>> model = hubert_ecg.load_model("path/to/checkpoint")        # doctest: +SKIP
>>> model(x).last_hidden_state                                   # doctest: +SKIP
"""

from .checkpoint import CheckpointError, load_model, save_pretrained
from .config import CheckpointInfo, HeadConfig, ModelConfig, create_config
from .model import HubertECG, HubertECGOutput, create_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "CheckpointInfo", "HeadConfig", "HubertECG", "HubertECGOutput", "ModelConfig",
    "create_config", "create_model", "load_model", "save_pretrained", "__version__",
]
