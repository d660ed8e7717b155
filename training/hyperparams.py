"""Training hyper-parameters and their defaults (no tensorflow import: the CLI's --help reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class HyperParams:
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0
    max_train_samples: int | None = None
    augment: bool = True
    filters: tuple[int, int] = field(default=(32, 64))
    dense_units: int = 128
    dropout: float = 0.3

    def as_dict(self) -> dict:
        return asdict(self)
