"""IDEC: improved deep embedded clustering with local structure preservation (Guo, Gao, Liu
and Yin, IJCAI 2017).

DEC (:mod:`jaxclust.algos.dec`) with the decoder kept during clustering:
``L = L_r + gamma * L_c`` (IDEC eq. 7), the reconstruction error ``L_r`` protecting the
embedding's local structure and ``L_c = KL(P || Q)`` the DEC clustering loss, ``gamma = 0.1``.
The clustering phase uses Adam at lr 1e-3 and update interval 140 (the authors' Keras code,
XifengGuo/IDEC, for MNIST); everything else is DEC's.
"""

from __future__ import annotations

import dataclasses

from jaxclust.algos.dec import DATASET_SETTINGS, Dec, DecConfig, dataset_settings  # noqa: F401


@dataclasses.dataclass(frozen=True)
class IdecConfig(DecConfig):
  """IDEC's settings: DEC's plus the kept decoder (section 4 of the paper)."""

  optimizer: str = "adam"
  learning_rate: float = 1e-3
  clustering_weight: float = 0.1  # gamma
  reconstruction_weight: float = 1.0


class Idec(Dec):
  """IDEC under the engine's contract: :class:`Dec` with :class:`IdecConfig`."""

  Config = IdecConfig


Config = IdecConfig
ALGORITHM = Idec
