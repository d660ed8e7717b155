"""The evaluation report: metrics.json content and the PNGs that sit next to it in assets.extra/."""

from __future__ import annotations

import datetime as dt
import io
import platform
from importlib import metadata

import numpy as np

from training.contract import NUM_CLASSES

CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, log loss, per-class precision/recall/F1, confusion matrix (rows true, columns predicted)."""
    labels = np.asarray(labels).astype(np.int64)
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positives = np.diag(confusion)
    predicted_counts = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(
        true_positives, predicted_counts, out=np.zeros(NUM_CLASSES), where=predicted_counts > 0
    )
    recall = np.divide(true_positives, support, out=np.zeros(NUM_CLASSES), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(NUM_CLASSES), where=denominator > 0)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "test_accuracy": round(float(true_positives.sum() / max(1, len(labels))), 6),
        "test_loss": round(float(-np.log(picked).mean()), 6),
        "test_samples": len(labels),
        "per_class": {
            str(c): {
                "precision": round(float(precision[c]), 6),
                "recall": round(float(recall[c]), 6),
                "f1": round(float(f1[c]), 6),
                "support": int(support[c]),
            }
            for c in range(NUM_CLASSES)
        },
        "confusion_matrix": confusion.tolist(),
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "tensorflow-serving-api"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def evaluate_model(model, data, hp, result) -> dict:
    """The full metrics.json content for a freshly trained Keras model."""
    from training.model import predict_probabilities

    probabilities = predict_probabilities(model, data.test_images)
    train_samples = min(len(data.train_images), hp.max_train_samples or len(data.train_images))
    return build_metrics(
        classification_metrics(data.test_labels, probabilities),
        dataset=data.dataset,
        checksums=data.checksums,
        hyper_parameters=hp.as_dict(),
        train_samples=train_samples,
        train_seconds=result.seconds,
        history=result.history,
    )


def build_metrics(
    scores: dict,
    *,
    dataset: str,
    checksums: dict[str, str],
    hyper_parameters: dict,
    train_samples: int,
    train_seconds: float,
    history: dict[str, list[float]],
) -> dict:
    return {
        **scores,
        "train_samples": train_samples,
        "train_seconds": round(train_seconds, 2),
        "hyper_parameters": hyper_parameters,
        "dataset": dataset,
        "data_checksums": {"algorithm": "sha256 of the decompressed IDX file", **checksums},
        "history": history,
        "library_versions": library_versions(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def curves_png(history: dict[str, list[float]]) -> bytes:
    """Loss and error rate per epoch (log axes), training vs. test; test is only monitored, never selects."""
    plt = _figure()
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, (ax_loss, ax_error) = plt.subplots(1, 2, figsize=(10, 3.8))
    series = (("", "training (augmented)", "tab:blue"), ("val_", "test", "tab:orange"))
    for prefix, label, color in series:
        if f"{prefix}loss" in history:
            ax_loss.plot(epochs, history[f"{prefix}loss"], marker="o", color=color, label=label)
        if f"{prefix}accuracy" in history:
            error = 100 * (1 - np.asarray(history[f"{prefix}accuracy"]))
            ax_error.plot(epochs, np.maximum(error, 1e-3), marker="o", color=color, label=label)
            ax_error.annotate(
                f"{error[-1]:.2f}%",
                (epochs[-1], max(error[-1], 1e-3)),
                xytext=(4, 0),
                textcoords="offset points",
            )
    ax_error.axhline(0.7, color="grey", linestyle="--", linewidth=1, label="target (99.3% accuracy)")
    for ax, title in ((ax_loss, "Cross-entropy loss"), (ax_error, "Error rate")):
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(0.6, len(epochs) + 0.6)
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_error.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    fig.suptitle("MNIST CNN training")
    return _png(fig)


def confusion_png(confusion: list[list[int]], accuracy: float) -> bytes:
    """Confusion matrix with counts; the diagonal is muted so the errors stand out."""
    plt = _figure()
    matrix = np.asarray(confusion)
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(errors, cmap="Reds", vmin=0, vmax=max(1, errors.max()))
    fig.colorbar(image, ax=ax, label="misclassified images")
    for (row, col), count in np.ndenumerate(matrix):
        if count == 0:
            continue
        on_diagonal = row == col
        color = "dimgray" if on_diagonal else ("white" if count > errors.max() * 0.6 else "black")
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(NUM_CLASSES))
    ax.set_yticks(range(NUM_CLASSES))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(f"Confusion matrix on the test set (accuracy {accuracy:.2%})")
    return _png(fig)


def report_files(metrics: dict) -> dict[str, bytes]:
    """The PNGs for assets.extra/, keyed by file name."""
    files = {CONFUSION_PNG: confusion_png(metrics["confusion_matrix"], metrics["test_accuracy"])}
    if metrics.get("history"):
        files[CURVES_PNG] = curves_png(metrics["history"])
    return files
