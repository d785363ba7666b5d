"""How `flowarena bench` (harness/bench.py) prints its measurements: aligned lines for one method,
a markdown table for `--method all`."""

from __future__ import annotations

from typing import Any

from harness.timing import PEAK_MATMUL_SIZE


def format_result(result: dict[str, Any]) -> str:
    """The measurements as aligned lines for a terminal."""
    path = f"{result['precision']} {'compiled' if result['compiled'] else 'eager'}"
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
        f"{result['peak_gflop_per_s']:.4g} GFLOP/s of one large {result['precision']} matrix product)",
    ]
    for precision, figures in _other_precisions(result):
        lines.append(
            f"  {precision + ' updates/s':<20}{figures['updates_per_s']:.4g} "
            f"({figures['updates_per_s'] / result['updates_per_s']:.2f}x {result['precision']}; "
            f"{figures['gflop_per_s']:.4g} GFLOP/s, {100 * figures['peak_share']:.0f}% of its peak "
            f"{figures['peak_gflop_per_s']:.4g})"
        )
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
    ("precision", "precision", "{}"),
    ("seeds", "seeds", "{}"),
    ("updates/s", "updates_per_s", "{:.3g}"),
    ("seed-updates/s", "seed_updates_per_s", "{:.3g}"),
    ("eager updates/s", "eager_updates_per_s", "{:.3g}"),
    ("speed-up", "compiled_speedup", "{:.2f}x"),
    ("compile s", "compile_s", "{:.0f}"),
    ("GFLOP/s", "gflop_per_s", "{:.3g}"),
    ("% of peak", "peak_share", "{:.0%}"),
)


def _other_precisions(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The precisions timed beside the main one (`--precision fp32,bf16`), with their figures."""
    return [(p, figures) for p, figures in result.get("by_precision", {}).items() if p != result["precision"]]


def format_table(results: list[dict[str, Any]]) -> str:
    """One markdown row per method (`--method all`); a precision timed beside the main one adds its
    updates/s, its speed-up over the main one and its share of its own peak."""
    others = [p for p, _ in _other_precisions(results[0])]
    columns = [*TABLE_COLUMNS]
    for p in others:
        columns += [
            (f"{p} updates/s", ("by_precision", p, "updates_per_s"), "{:.3g}"),
            (f"{p} / {results[0]['precision']}", ("by_precision", p, "speedup"), "{:.2f}x"),
            (f"{p} % of {p} peak", ("by_precision", p, "peak_share"), "{:.0%}"),
        ]
    header = "| " + " | ".join(title for title, _, _ in columns) + " |"
    rows = [header, "|" + "---|" * len(columns)]
    for result in results:
        cells = []
        for _, key, fmt in columns:
            value = _cell(result, key)
            if key == "compiled":
                value = "compiled" if value else "eager"
            cells.append("" if value is None else fmt.format(value))
        rows.append("| " + " | ".join(cells) + " |")
    first = results[0]
    peaks = (
        "; ".join(
            f"{p} {figures['peak_gflop_per_s']:.4g}" for p, figures in first.get("by_precision", {}).items()
        )
        or f"{first['precision']} {first['peak_gflop_per_s']:.4g}"
    )
    rows.append(
        f"\n{first['device']} ({first['device_name']}), {first['threads']} threads, torch {first['torch']}; "
        f"peak GFLOP/s (one {PEAK_MATMUL_SIZE}^2 matrix product): {peaks}"
    )
    return "\n".join(rows)


def _cell(result: dict[str, Any], key: str | tuple[str, str, str]) -> Any:
    if isinstance(key, str):
        return result.get(key)
    _, precision, name = key
    figures = result["by_precision"][precision]
    if name == "speedup":
        return figures["updates_per_s"] / result["updates_per_s"]
    return figures.get(name)
