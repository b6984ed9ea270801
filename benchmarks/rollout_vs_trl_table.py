"""The markdown report of benchmarks/rollout_vs_trl.py, from its results dict (also its --out JSON)."""

from __future__ import annotations


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def format_report(results: dict, hf_variants: tuple[str, ...]) -> str:
    """The run's markdown tables: env steps/s and step seconds with ratios to TRL's loop, FLOP/s, padding."""
    acting, steps = results["acting_env_steps_per_s"], results["step_seconds"]
    trl_act, trl_step = acting["trl environment_factory"], steps.get("trl environment_factory")
    lines = [
        "| method | acting: env steps/s (median) | x TRL | GRPO step: s (median) | TRL s / this s |",
        "|---|---|---|---|---|",
    ]
    for method in (*hf_variants, "rlft vllm", "trl environment_factory"):
        act, step = acting.get(method), steps.get(method)
        ratio_act = act / trl_act if act else None
        ratio_step = trl_step / step if step and trl_step else None
        lines.append(
            f"| {method} | {_num(act, '.1f')} | {_num(ratio_act, '.2f', 'x')} | {_num(step, '.2f')} | "
            f"{_num(ratio_step, '.2f', 'x')} |"
        )
    lines += [
        "",
        "| model (configs) | hidden x layers | matmul rate at hidden / at 2048, GFLOP/s | "
        "HF engine GFLOP/s (share of each) | split steps GFLOP/s (share of each) |",
        "|---|---|---|---|---|",
    ]
    for f in results["flops"]:
        cells = [
            f"{v['achieved_flops'] / 1e9:.2f} ({v['share_of_hidden_rate']:.0%} / {v['share_of_2048_rate']:.0%})"
            for v in (f[name] for name in hf_variants)
        ]
        lines.append(
            f"| {f['config']} | {f['hidden_size']} x {f['layers']} | {f['matmul_rate_hidden'] / 1e9:.2f} / "
            f"{f['matmul_rate_2048'] / 1e9:.2f} | {cells[0]} | {cells[1]} |"
        )
    lines.append("")
    for variant, pad in results["padding"].items():
        lines.append(
            f"padding, {variant}: {pad['generation_fed_padding']:.0%} of token positions fed per generation "
            f"forward ({pad['generation_fed']} fed for {pad['generation_real']} real), "
            f"{pad['generation_attended_padding']:.0%} of attended cache slots"
        )
    lines.append(
        f"padding of the training forward (rlft hf GRPO steps): {results['training_fed_padding']:.1%}"
    )
    if results.get("vllm_note"):
        lines.append(f"rlft vllm: {results['vllm_note']}")
    return "\n".join(lines)
