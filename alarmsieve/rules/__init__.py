"""Threat rules: which detections on which camera are threats (no dependency on other layers)."""

from alarmsieve.rules.evaluate import AlarmFacts, DetectionJudgement, Judgement, ObjectBox, judge
from alarmsieve.rules.schema import (
    BUILTIN_DEFAULTS,
    DEFAULT_RULES_YAML,
    EffectiveRules,
    LabelPolicy,
    LabelRule,
    PixelArea,
    RuleBlock,
    RulesError,
    RuleSet,
    load_rules,
)

__all__ = [
    "BUILTIN_DEFAULTS",
    "DEFAULT_RULES_YAML",
    "AlarmFacts",
    "DetectionJudgement",
    "EffectiveRules",
    "Judgement",
    "LabelPolicy",
    "LabelRule",
    "ObjectBox",
    "PixelArea",
    "RuleBlock",
    "RuleSet",
    "RulesError",
    "judge",
    "load_rules",
]
