"""The advisor: stored session → features → explainable rules + regressions → recommendations;
actions apply them to a copy of a model and an A/B run verifies them by measurement.

Entry points: :func:`wattlens.advisor.features.extract_features`,
:func:`wattlens.advisor.rules.evaluate_all`, :mod:`wattlens.advisor.regression`. Importing this
package loads nothing heavy; torch is loaded only by ``actions``/``verify``/``optimize``.
"""

from __future__ import annotations

from typing import Any


def load_optimized(folder: Any, model: Any = None) -> Any:
    """Load a ``wattlens optimize`` output folder (see :func:`wattlens.advisor.modelio.load_optimized`).

    From a Hugging Face model: ``load_optimized(out)`` (the same as transformers'
    ``AutoModel*.from_pretrained(out)``). From a torch module file: ``load_optimized(out, MyNet())``.
    """
    from wattlens.advisor.modelio import load_optimized as _load

    return _load(folder, model)
