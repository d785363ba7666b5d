"""The fixed policy both evaluation loops run in the evaluation-path check: a chunk of H actions as a
deterministic function of the observation, tanh(float32(obs) W + b), with W and b drawn once from
numpy's generator of a given seed. Plain numpy, so that both environments import it."""

from __future__ import annotations

import numpy as np


def fixed_policy(obs_dim: int, chunk_dim: int, seed: int = 0):
    """A function (..., obs) -> (..., chunk_dim) in (-1, 1), float32."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((obs_dim, chunk_dim)) * 2.0 / np.sqrt(obs_dim)).astype(np.float32)
    bias = (rng.standard_normal(chunk_dim) * 0.5).astype(np.float32)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.tanh(np.asarray(obs, dtype=np.float32) @ weight + bias).astype(np.float32)

    return act
