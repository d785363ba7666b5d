"""How `flowarena bench` (harness/bench.py) prints its measurements: aligned lines for one method,
a markdown table for `--method all`."""

from __future__ import annotations

from typing import Any

from harness.timing import PEAK_MATMUL_SIZE


def format_result(result: dict[str, Any]) -> str:
    """The measurements as aligned lines for a terminal."""
    path = "compiled" if result["compiled"] else "eager"
    lines = [
        f"{result['method']} ({result['config']} config: hidden {result['hidden_dims']}, "
        f"{result['num_critics']} critics, batch {result['batch_size']}, seeds {result['seeds']}) "
        f"on {result['device']} ({result['threads']} threads, load {result['load_average_1m']:.2f})",
        f"  updates/s           {result['updates_per_s']:.4g} {path} ({result['ms_per_update']:.4g} ms per update)",
        f"  seed-updates/s      {result['seed_updates_per_s']:.4g}",
    ]
    if "eager_updates_per_s" in result:
        lines.append(
            f"  eager updates/s     {result['eager_updates_per_s']:.4g} "
            f"(compiled {result['compiled_speedup']:.2f}x)"
        )
    if result["compile_s"] is not None:
        lines.append(f"  compile s           {result['compile_s']:.3g} (the first update's extra time)")
    lines += [
        f"  GFLOP per update    {result['gflop_per_update']:.4g}",
        f"  GFLOP/s             {result['gflop_per_s']:.4g} ({100 * result['peak_share']:.0f}% of the "
        f"{result['peak_gflop_per_s']:.4g} GFLOP/s of one large matrix product)",
    ]
    if result.get("sampler_batches_per_s") is not None:
        lines.append(f"  sampler batches/s   {result['sampler_batches_per_s']:.4g}")
    if "eval_episodes_per_s" in result:
        lines.append(
            f"  eval episodes/s     {result['eval_episodes_per_s']:.4g} ({result['eval_episodes']} episodes, "
            f"{result['eval_envs']} envs, {result['eval_workers']} workers, "
            f"{result['eval_env_steps_per_s']:.4g} env steps/s)"
        )
    return "\n".join(lines)


TABLE_COLUMNS = (
    ("method", "method", "{}"),
    ("config", "config", "{}"),
    ("update", "compiled", "{}"),
    ("seeds", "seeds", "{}"),
    ("updates/s", "updates_per_s", "{:.3g}"),
    ("seed-updates/s", "seed_updates_per_s", "{:.3g}"),
    ("eager updates/s", "eager_updates_per_s", "{:.3g}"),
    ("speed-up", "compiled_speedup", "{:.2f}x"),
    ("compile s", "compile_s", "{:.0f}"),
    ("GFLOP/s", "gflop_per_s", "{:.3g}"),
    ("% of peak", "peak_share", "{:.0%}"),
)


def format_table(results: list[dict[str, Any]]) -> str:
    """One markdown row per method (`--method all`)."""
    header = "| " + " | ".join(title for title, _, _ in TABLE_COLUMNS) + " |"
    rows = [header, "|" + "---|" * len(TABLE_COLUMNS)]
    for result in results:
        cells = []
        for _, key, fmt in TABLE_COLUMNS:
            value = result.get(key)
            if key == "compiled":
                value = "compiled" if value else "eager"
            cells.append("" if value is None else fmt.format(value))
        rows.append("| " + " | ".join(cells) + " |")
    first = results[0]
    rows.append(
        f"\n{first['device']} ({first['device_name']}), {first['threads']} threads, torch {first['torch']}; "
        f"peak {first['peak_gflop_per_s']:.4g} GFLOP/s (one {PEAK_MATMUL_SIZE}^2 float32 matrix product)"
    )
    return "\n".join(rows)
