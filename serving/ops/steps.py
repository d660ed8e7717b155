"""A rollout's steps, checked by one rule: when `mnist-models rollout --steps` is parsed (this module loads
nothing heavy, so the CLI checks it before TensorFlow's runtime is set aside) and when the driver resumes a
stored rollout."""

from __future__ import annotations


def check_steps(steps: list[int]) -> tuple[int, ...]:
    """Percentages 1-100, strictly increasing, ending at 100 (the promotion happens after holding 100 %)."""
    if not steps or any(not 1 <= s <= 100 for s in steps):
        raise ValueError("steps are percentages from 1 to 100")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("steps must increase")
    if steps[-1] != 100:
        raise ValueError("the last step must be 100")
    return tuple(steps)
