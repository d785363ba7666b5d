"""What the parity check needs to know per method: the reference agent and config that match ours,
where each reference parameter lives in our agent (one name map per network kind), and which
reference loss terms are which of our metrics.

A network kind maps a reference sub-tree of parameters onto one of our modules:
  mlp          Flax MLP {Dense_i: kernel, bias; LayerNorm_i: scale, bias} -> our MLP (linears.i, norms.i)
  tanh_normal  the reference's TanhNormal {MLP_0, OutputDenseMean, OutputDenseLogStd} -> our TanhGaussian
  actor        the reference's Actor {actor_net, mean_net} -> our ReBRAC TanhActor
  qgf_actor    the QGF reference's ActorFlowField {MLP_0, Dense_0} -> our EmbeddedTimeVelocityField
  ddpm         the reference's DDPM (Fourier time features, condition MLP, denoiser MLP) -> our Denoiser
  scalar       a LogParam {log_value} -> one of our parameters (e.g. log_alpha)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The small shared config: 3 hidden layers of 32, 2 critics, batch 16 (obs 11, action 3, chunks of 4).
HIDDEN = (32, 32, 32)
REF_COMMON = {"actor_hidden_dims": HIDDEN, "value_hidden_dims": HIDDEN, "num_qs": 2, "batch_size": 16}
OURS_COMMON = {"hidden_dims": HIDDEN, "num_critics": 2, "batch_size": 16}


def mlp_name(ref_key: str) -> str:
    """'Dense_2/kernel' -> 'linears.2.weight'; 'LayerNorm_0/scale' -> 'norms.0.weight'."""
    m = re.fullmatch(r"(Dense|LayerNorm)_(\d+)/(kernel|bias|scale)", ref_key)
    if m is None:
        raise KeyError(f"not an MLP parameter: {ref_key}")
    group = "linears" if m[1] == "Dense" else "norms"
    return f"{group}.{m[2]}.{'bias' if m[3] == 'bias' else 'weight'}"


def tanh_normal_name(ref_key: str) -> str:
    if ref_key.startswith("MLP_0/"):
        return "trunk." + mlp_name(ref_key[len("MLP_0/") :])
    head, leaf = ref_key.split("/")
    part = {"OutputDenseMean": "mean", "OutputDenseLogStd": "log_std"}[head]
    return f"{part}.{'weight' if leaf == 'kernel' else 'bias'}"


def actor_name(ref_key: str) -> str:
    """The reference's deterministic Actor {actor_net: MLP, mean_net: Dense} -> our TanhActor (one MLP
    whose last linear layer is mean_net)."""
    if ref_key.startswith("actor_net/"):
        return "net." + mlp_name(ref_key[len("actor_net/") :])
    head, leaf = ref_key.split("/")
    assert head == "mean_net", ref_key
    return f"net.linears.{len(HIDDEN)}.{'weight' if leaf == 'kernel' else 'bias'}"


def qgf_actor_name(ref_key: str) -> str:
    """The QGF reference's ActorFlowField {MLP_0: trunk, Dense_0: output} -> our
    EmbeddedTimeVelocityField (net.linears, net.norms; the output is the last linear layer)."""
    if ref_key.startswith("MLP_0/"):
        return "net." + mlp_name(ref_key[len("MLP_0/") :])
    head, leaf = ref_key.split("/")
    assert head == "Dense_0", ref_key
    return f"net.linears.{len(HIDDEN)}.{'weight' if leaf == 'kernel' else 'bias'}"


def ddpm_name(ref_key: str) -> str:
    """The reference's DDPM {FourierFeatures_0: kernel, MLP_0: condition, MLP_1: denoiser} -> our
    Denoiser (time_weight, condition, net); the Fourier kernel (F/2, 1) is our time_weight (1, F/2)."""
    if ref_key == "FourierFeatures_0/kernel":
        return "time_weight"
    head, rest = ref_key.split("/", 1)
    return {"MLP_0": "condition.", "MLP_1": "net."}[head] + mlp_name(rest)


KINDS = {
    "ddpm": ddpm_name,
    "qgf_actor": qgf_actor_name,
    "mlp": mlp_name,
    "tanh_normal": tanh_normal_name,
    "actor": actor_name,
    "scalar": lambda key: "",
}


@dataclass
class MethodParity:
    """One method's parity set-up (reference side and ours)."""

    ref_agent: str  # module in the reference's agents/
    ours: str  # our registry name
    networks: list[tuple[str, str, str]]  # (kind, reference prefix, our module path)
    losses: dict[str, str]  # reference info key -> our metric key ("total" -> "loss")
    ref_overrides: dict = field(default_factory=dict)
    ours_overrides: dict = field(default_factory=dict)
    ref_unused: tuple[str, ...] = ()  # reference prefixes ours has no counterpart of (must stay unused)
    ref_repo: str = "qam"  # which reference: qam (ColinQiyangLi/qam) or qgf (zhouzypaul/qgf)
    # Declared departures (README) that scale a loss term and its gradients: reference loss key or
    # reference parameter prefix -> ours / reference. Compared after dividing ours by the factor.
    declared: dict[str, float] = field(default_factory=dict)
    # positions (in each update's recorded draws) of reference draws that the reference never uses,
    # e.g. QAM's noise drawn for the last SDE step, which is a plain Euler step
    skip_draws: tuple[int, ...] = ()

    def ref_config(self) -> dict:
        return {**REF_COMMON, **self.ref_overrides}


def critic(ref: str, ours: str) -> list[tuple[str, str, str]]:
    """An online critic and its target."""
    return [
        ("mlp", f"modules_{ref}/value_net", f"{ours}.net"),
        ("mlp", f"modules_target_{ref}/value_net", f"target_{ours}.net"),
    ]


METHODS: dict[str, MethodParity] = {
    "fql": MethodParity(
        ref_agent="fql",
        ours="fql",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_bc_flow/mlp", "flow.net"),
            ("mlp", "modules_actor_onestep_flow/mlp", "one_step"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/bc_flow_loss": "bc_loss",
            "actor/distill_loss": "distill_loss",
        },
        ref_overrides={"alpha": 300.0},
        ours_overrides={"alpha": 300.0},
    ),
    "qam": MethodParity(
        ref_agent="qam",
        ours="qam",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_slow/mlp", "base_flow.net"),
            ("mlp", "modules_target_actor_slow/mlp", "target_base_flow.net"),
            ("mlp", "modules_actor_fast/mlp", "fine_flow.net"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/flow_loss": "bc_loss",
            "actor/adj_loss": "adjoint_loss",
        },
        ref_overrides={"inv_temp": 1.0},
        ours_overrides={"inv_temp": 1.0},
        ref_unused=("modules_target_actor_fast",),
    ),
    "qam-fql": MethodParity(
        ref_agent="qam",
        ours="qam-fql",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_slow/mlp", "base_flow.net"),
            ("mlp", "modules_target_actor_slow/mlp", "target_base_flow.net"),
            ("mlp", "modules_actor_fast/mlp", "fine_flow.net"),
            ("mlp", "modules_one_step_actor/mlp", "one_step"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "actor/flow_loss": "bc_loss",
            "actor/adj_loss": "adjoint_loss",
            "actor/fql_distill_loss": "distill_loss",
        },
        ref_overrides={"inv_temp": 1.0, "fql_alpha": 30.0},
        ours_overrides={"inv_temp": 1.0, "fql_alpha": 30.0},
        ref_unused=("modules_target_actor_fast",),
        # draws: next-action noise, BC x_0 and t, SDE x_0, 10 step noises (the 10th unused), ...
        skip_draws=(13,),
    ),
    "qam-edit": MethodParity(
        ref_agent="qam",
        ours="qam-edit",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_slow/mlp", "base_flow.net"),
            ("mlp", "modules_target_actor_slow/mlp", "target_base_flow.net"),
            ("mlp", "modules_actor_fast/mlp", "fine_flow.net"),
            ("tanh_normal", "modules_edit_actor", "edit_policy"),
            ("scalar", "modules_edit_alpha/log_value", "log_alpha"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "actor/flow_loss": "bc_loss",
            "actor/adj_loss": "adjoint_loss",
            "actor/edit_entropy": "entropy",
            "actor/edit_alpha": "alpha",
        },
        ref_overrides={"inv_temp": 1.0, "edit_scale": 0.1},
        ours_overrides={"inv_temp": 1.0, "edit_scale": 0.1},
        ref_unused=("modules_target_actor_fast",),
        # draws: next-action noise and edit, BC x_0 and t, SDE x_0, 10 step noises (10th unused), ...
        skip_draws=(14,),
    ),
    "dsrl": MethodParity(
        ref_agent="dsrl",
        ours="dsrl",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_z_critic/value_net", "z_critic.net"),
            ("mlp", "modules_actor_bc_flow/mlp", "flow.net"),
            ("mlp", "modules_target_actor_bc_flow/mlp", "target_flow.net"),
            ("tanh_normal", "modules_actor", "latent_policy"),
            ("scalar", "modules_alpha/log_value", "log_alpha"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/distill_loss": "distill_loss",
            "critic/q_mean": "q_data",
            "actor/flow_loss": "bc_loss",
            "actor/actor_loss": "latent_policy_loss",
            "actor/alpha": "alpha",
            "actor/entropy": "entropy",
        },
        ref_overrides={"noise_scale": 1.0},
        ours_overrides={"noise_scale": 1.0},
    ),
    "fbrac": MethodParity(
        ref_agent="fbrac",
        ours="fbrac",
        networks=[*critic("critic", "critic"), ("mlp", "modules_actor_flow/mlp", "flow.net")],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/bc_flow_loss": "bc_loss",
        },
        ref_overrides={"alpha": 0.3},
        ours_overrides={"alpha": 0.3},
    ),
    "rebrac": MethodParity(
        ref_agent="rebrac",
        ours="rebrac",
        networks=[
            *critic("critic", "critic"),
            ("actor", "modules_actor", "actor"),
            ("actor", "modules_target_actor", "target_actor"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/bc_loss": "bc_loss",
            "actor/mse": "bc_mse",
        },
        ref_overrides={"alpha_actor": 0.1},
        ours_overrides={"alpha_actor": 0.1},
    ),
    "ifql": MethodParity(
        ref_agent="ifql",
        ours="ifql",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_value/value_net", "value"),
            ("mlp", "modules_actor_flow/mlp", "flow.net"),
        ],
        losses={
            "total": "loss",
            "value/value_loss": "value_loss",
            "value/v_mean": "v_data",
            "critic/critic_loss": "critic_loss",
            "actor/actor_loss": "bc_loss",
        },
        ref_overrides={"kappa": 0.9},
        ours_overrides={"kappa": 0.9},
    ),
    "fawac": MethodParity(
        ref_agent="fawac",
        ours="fawac",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_value/value_net", "value"),
            ("mlp", "modules_actor/mlp", "flow.net"),
        ],
        losses={
            "total": "loss",
            "critic/value_loss": "value_loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/actor_loss": "actor_loss",
        },
        ref_overrides={"inv_temp": 3.0},
        ours_overrides={"inv_temp": 3.0},
    ),
    "fedit": MethodParity(
        ref_agent="fedit",
        ours="fedit",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_bc_flow/mlp", "flow.net"),
            ("tanh_normal", "modules_edit_actor", "edit_policy"),
            ("scalar", "modules_alpha/log_value", "log_alpha"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/bc_flow_loss": "bc_loss",
            "actor/edit_entropy": "entropy",
        },
        ref_overrides={"edit_scale": 0.2},
        ours_overrides={"edit_scale": 0.2},
    ),
    **{
        name: MethodParity(
            ref_agent="cgql",
            ours=name,
            networks=[
                ("mlp", "modules_critic/mlp", "critic.net"),
                ("mlp", "modules_target_critic/mlp", "target_critic.net"),
                ("mlp", "modules_actor/mlp", "flow.net"),
                ("mlp", "modules_target_actor/mlp", "target_flow.net"),
            ],
            losses={"total": "loss", "critic/critic_loss": "critic_loss", "critic/q_mean": "q_data"},
            ref_overrides={"mode": mode, "inv_temp": 1.0},
            ours_overrides={"mode": mode, "inv_temp": 1.0},
        )
        for name, mode in (("cgql", "simple"), ("cgql-m", "mse"), ("cgql-l", "linex"))
    },
    "bam": MethodParity(
        ref_agent="bam",
        ours="bam",
        networks=[
            *critic("critic", "critic"),
            ("mlp", "modules_actor_slow/mlp", "base_flow.net"),
            ("mlp", "modules_target_actor_slow/mlp", "target_base_flow.net"),
            ("mlp", "modules_actor_fast/mlp", "fine_flow.net"),
        ],
        losses={"total": "loss", "critic/critic_loss": "critic_loss", "critic/q_mean": "q_data"},
        ref_overrides={"inv_temp": 1.0},
        ours_overrides={"inv_temp": 1.0},
        ref_unused=("modules_target_actor_fast",),
    ),
    "rlpd": MethodParity(
        ref_agent="rlpd",
        ours="rlpd",
        networks=[
            *critic("critic", "critic"),
            ("tanh_normal", "modules_actor", "actor"),
            ("scalar", "modules_alpha/log_value", "log_alpha"),
        ],
        losses={
            "total": "loss",
            "critic/critic_loss": "critic_loss",
            "critic/q_mean": "q_data",
            "actor/actor_loss": "actor_loss",
            "actor/alpha_loss": "alpha_loss",
            "actor/bc_loss": "bc_loss",
            "actor/alpha": "alpha",
            "actor/entropy": "entropy",
        },
        ref_overrides={"bc_alpha": 0.1},
        ours_overrides={"bc_alpha": 0.1},
    ),
    "qgf": MethodParity(
        ref_agent="qgf",
        ours="qgf",
        ref_repo="qgf",
        declared={"critic/critic_loss": 2.0, "modules_critic/": 2.0},  # ours sums the 2 critics' MSEs
        networks=[
            ("mlp", "modules_critic/value_net", "critic.net"),
            ("mlp", "modules_target_critic/value_net", "target_critic.net"),
            ("mlp", "modules_value/value_net", "value"),
            ("qgf_actor", "modules_policy", "flow"),
        ],
        losses={  # no "total": ours holds the critic term twice (declared)
            "policy/bc_loss": "bc_loss",
            "critic/critic_loss": "critic_loss",
            "value/value_loss": "value_loss",
        },
        # the QGF paper's settings (suites/ogbench.py QGF_OVERRIDES) at the small sizes
        ref_overrides={
            "actor_hidden_dims": HIDDEN,
            "value_network_kwargs": {"hidden_dims": HIDDEN, "layer_norm": True},
            "num_qs": 2,
            "batch_size": 16,
        },
        ours_overrides={
            "actor_layer_norm": True,
            "time_embedding_dim": 16,
            "critic_norm_first": True,
            "actor_output_init": "lecun",
            "bc_loss": "qgf",
        },
    ),
    **{
        name: MethodParity(
            ref_agent="dcgql",
            ours=name,
            networks=[*critic("critic", "critic"), ("ddpm", "modules_actor", "actor")],
            # no "total": the reference raises each actor loss to the power valid (a chunk that ended
            # early adds 1), ours weighs it 0 (declared); the gradients are the same
            losses={"critic/critic_loss": "critic_loss", "critic/q": "q_data"},
            ref_overrides={"actor_loss_type": name, **settings},
            ours_overrides=settings,
            # draws: x_T, then one z per reverse step t = T..1; the z of t = 1 is never added
            skip_draws=(10,),
        )
        for name, settings in (
            ("qsm", {"inv_temp": 10.0, "alpha": 10.0, "clip_sampler_after": True}),
            ("dac", {"alpha": 1.0, "clip_sampler_before": True}),
        )
    },
}
