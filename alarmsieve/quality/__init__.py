"""Verdict quality: confidence intervals, the HTML eval report, the robustness set and threshold tuning."""
