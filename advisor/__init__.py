"""The advisor: stored session → features → explainable rules + regressions → recommendations;
actions apply them to a copy of a model and an A/B run verifies them by measurement.

Entry points: :func:`wattlens.advisor.features.extract_features`,
:func:`wattlens.advisor.rules.evaluate_all`, :mod:`wattlens.advisor.regression`. Importing this
package loads nothing heavy; torch is loaded only by ``actions``/``verify``/``optimize``.
"""
