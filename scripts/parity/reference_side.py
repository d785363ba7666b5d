"""The reference half of the parity check: runs inside the reference's own JAX environment.

It imports an agent from a user-given checkout of the reference code (never copied into flowarena),
builds it at a small config, records every random draw its update makes (jax.random.normal and
jax.random.uniform, in call order, with JIT disabled so that the values are concrete), and writes one
.npz with: the initial parameters, the batch, the draws of every update, and the loss terms, gradients
and parameters after update 1 and after the last update. flowarena's half (scripts/parity/compare.py)
reads that file.

usage: python reference_side.py --reference DIR --agent FILE --out OUT.npz [--updates 10] [key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="the reference checkout (holds agents/ and utils/)")
    p.add_argument("--agent", required=True, help="a module name in the reference's agents/, e.g. fql")
    p.add_argument("--out", required=True)
    p.add_argument("--batch", help="an .npz batch to use instead of a synthetic one")
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batched-example", action="store_true", help="create() takes a batch (QGF's)")
    p.add_argument("--obs-dim", type=int, default=11)
    p.add_argument("--action-dim", type=int, default=3)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("overrides", nargs="*", help="reference config overrides, key=value (Python literals)")
    return p.parse_args()


def synthetic_batch(config, obs_dim: int, act_dim: int, horizon: int, seed: int) -> dict:
    """A batch with every case the update must handle: chunks that end inside (valid 0 after the end),
    terminal masks, rewards of both signs."""
    rng = np.random.default_rng(seed)
    b = config["batch_size"]
    ends = rng.integers(1, horizon + 1, size=b)  # steps of the chunk inside the episode
    ends[: b // 2] = horizon
    steps = np.arange(horizon)
    valid = (steps[None] < ends[:, None]).astype(np.float32)
    terminal_ep = rng.random(b) < 0.3
    masks = np.where((steps[None] >= ends[:, None] - 1) & terminal_ep[:, None], 0.0, 1.0).astype(np.float32)
    rew = rng.standard_normal((b, horizon)).astype(np.float32)
    disc = config["discount"] ** steps
    rewards = np.cumsum(rew * disc * valid, axis=1).astype(np.float32)
    return dict(
        observations=rng.standard_normal((b, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (b, horizon, act_dim)).astype(np.float32),
        rewards=rewards,
        masks=masks,
        valid=valid,
        terminals=(1.0 - masks).astype(np.float32),
        next_observations=rng.standard_normal((b, horizon, obs_dim)).astype(np.float32),
    )


class DrawRecorder:
    """Wraps jax.random.normal/uniform (and randint, kind 'randint-<min>-<max>'); while `on`, appends every drawn array (call order). A draw made
    inside TensorFlow Probability is recorded as kind 'normal-eventfirst': tfp's diagonal Gaussians draw
    the event dimension first, (D, *batch), and transpose it last; flowarena's draws are (*batch, D)."""

    def __init__(self, jax) -> None:
        self.on, self.draws, self.kinds = False, [], []
        for kind in ("normal", "uniform"):
            original = getattr(jax.random, kind)
            setattr(jax.random, kind, self._wrap(kind, original))
        randint = jax.random.randint

        def draw_int(key, shape, minval, maxval, *args, **kwargs):
            out = randint(key, shape, minval, maxval, *args, **kwargs)
            if self.on:  # QGF's grid times, DDPM steps: recorded with their range
                self.draws.append(np.asarray(out, dtype=np.float32))
                self.kinds.append(f"randint-{int(minval)}-{int(maxval)}")
            return out

        jax.random.randint = draw_int

    def _wrap(self, kind, original):
        def draw(*args, **kwargs):
            out = original(*args, **kwargs)
            if self.on:
                self.draws.append(np.asarray(out, dtype=np.float32))
                self.kinds.append(kind + ("-eventfirst" if from_tfp() else ""))
            return out

        return draw


def from_tfp() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "tensorflow_probability" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if hasattr(v, "items"):
            out.update(flatten(v, path))
        else:
            out[path] = np.asarray(v, dtype=np.float32)
    return out


def params_of(agent) -> dict:
    """All parameters as one tree: the QAM reference's one ModuleDict (`modules_<name>/...`), or the
    QGF reference's separate train states, named the same way."""
    if hasattr(agent, "network"):
        return agent.network.params
    return {f"modules_{k}": getattr(agent, k).params for k in ("policy", "critic", "target_critic", "value")}


def losses_and_grads(jax, agent, batch, rng):
    """(total loss, info, gradients) of the update the agent is about to make with key `rng`."""
    if hasattr(agent, "network"):

        def loss_fn(params):
            return agent.total_loss(batch, params, rng=rng)

        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(agent.network.params)
        return loss, info, grads
    # QGF: three losses, each on its own network (update() hands the policy loss the same key)
    parts = {
        "policy": lambda p: agent.policy_loss(batch, p, rng=rng),
        "critic": lambda p: agent.critic_loss(batch, p),
        "value": lambda p: agent.value_loss(batch, p),
    }
    loss, info, grads = 0.0, {}, {}
    for name, fn in parts.items():
        (value, part_info), grad = jax.value_and_grad(fn, has_aux=True)(getattr(agent, name).params)
        loss = loss + value
        info.update({f"{name}/{k}": v for k, v in part_info.items()})
        grads[f"modules_{name}"] = grad
    return loss, info, grads


def main() -> None:
    args = parse_args()
    sys.path.insert(0, args.reference)
    import jax  # noqa: PLC0415  (the reference's environment only)

    jax.config.update("jax_platform_name", "cpu")
    recorder = DrawRecorder(jax)
    module = importlib.import_module("agents." + args.agent)
    from agents import agents  # noqa: PLC0415

    config = module.get_config()
    config["horizon_length"] = args.horizon
    config["action_chunking"] = True
    for item in args.overrides:
        key, value = item.split("=", 1)
        config[key] = eval(value)  # a developer's own literal, e.g. (32,32)
    if args.batch:
        batch = dict(np.load(args.batch))
    else:
        batch = synthetic_batch(config, args.obs_dim, args.action_dim, args.horizon, args.seed + 1)
    example = slice(None) if args.batched_example else 0
    agent = agents[config["agent_name"]].create(
        args.seed, batch["observations"][example], batch["actions"][example, 0], config
    )
    record = {f"batch/{k}": v for k, v in batch.items()}
    record.update({f"init/{k}": v for k, v in flatten(params_of(agent)).items()})
    with jax.disable_jit():
        for step in range(1, args.updates + 1):
            _, rng = jax.random.split(agent.rng)  # the key the update hands to its losses
            recorder.on, recorder.draws, recorder.kinds = True, [], []
            loss, info, grads = losses_and_grads(jax, agent, batch, rng)
            recorder.on = False
            for i, (draw, kind) in enumerate(zip(recorder.draws, recorder.kinds)):
                record[f"draws{step}/{i:03d}_{kind}"] = draw
            if "actor_freq" in config:  # ReBRAC: main.py moves the targets on every actor_freq-th step
                agent, _ = agent.update(batch, full_update=step % config["actor_freq"] == 0)
            else:
                agent, _ = agent.update(batch)
            if step in (1, args.updates):
                record[f"loss{step}/total"] = np.float32(loss)
                record.update({f"loss{step}/{k}": np.float32(v) for k, v in info.items() if np.size(v) == 1})
                record.update({f"grad{step}/{k}": v for k, v in flatten(grads).items()})
                record.update({f"params{step}/{k}": v for k, v in flatten(params_of(agent)).items()})
    record["meta/updates"] = np.int64(args.updates)
    record["meta/discount"] = np.float32(config["discount"])
    np.savez(args.out, **record)
    print(
        f"{args.agent}: {args.updates} updates, {len([k for k in record if k.startswith('draws1/')])} "
        f"draws per update -> {args.out}"
    )


if __name__ == "__main__":
    main()
