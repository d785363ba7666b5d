"""A complete method in a few lines (plain flow behaviour cloning), used by the tests as a
user's class registered from outside the package."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.base import Agent, BaseConfig, Batch
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import VelocityField


@dataclass
class FlowBCConfig(BaseConfig):
    hidden_dims: tuple[int, ...] = (32, 32)
    lr: float = 1e-3
    flow_steps: int = 5
    batch_size: int = 32


class FlowBC(Agent):
    """Flow behaviour cloning: the BC flow alone, acting with its Euler ODE."""

    name = "test-flow-bc"
    Config = FlowBCConfig

    def __init__(self, spec, config: FlowBCConfig, *, device="cpu", seed=0) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        self.flow = VelocityField(spec.obs_dim, spec.chunk_dim, config.hidden_dims, stack=self.stack)
        self.setup_optimizer(self.flow.parameters(), lr=config.lr)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        bc = flow_matching_loss(
            self.flow, batch.observations, batch.flat_actions, batch.valid[..., -1], self.generator
        )
        return bc, {"bc_loss": bc}

    def act(self, obs: Tensor) -> Tensor:
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator)
        return sample_actions(self.flow, obs, noise, self.config.flow_steps)
