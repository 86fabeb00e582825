"""Threat rules: the YAML schema, loading from a rules repo, and per-camera resolution.

Rules are layered, field by field: built-in values (``default_rules.yaml``) < the repo's
``defaults:`` block < ``cameras: {id: ...}`` overrides. Inside the merged view a label's own value
beats the block-wide one. Later issues add sites/groups/zones/schedules as further layers between
defaults and cameras; the layer walk in :meth:`RuleSet.for_camera` is where they plug in.
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Collection, Mapping
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Severity = Literal["alert", "review", "ignore"]

DEFAULTS_PATH = "defaults"
_HELP = "see alarmsieve/rules/default_rules.yaml (DEFAULT_RULES_YAML), which shows every option"


class RulesError(ValueError):
    """A rules file is wrong. ``str()`` names the file, line, field, what is wrong and how to fix it."""

    def __init__(self, file: str, line: int | None, field: str, reason: str, fix: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        self.fix = fix
        super().__init__(file, line, field, reason, fix)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class _Strict(BaseModel):
    # A typo in a rules file must be an error, never a silently ignored field.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _reject_bool(value: Any) -> Any:
    # YAML turns yes/no/on/off into booleans, which pydantic would otherwise read as 1.0/0.0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Score = Annotated[float, BeforeValidator(_reject_bool), Field(ge=0.0, le=1.0)]


class PixelArea(_Strict):
    """``min_box_area: {pixels: N}``: box width x height in pixels."""

    pixels: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)]


def _parse_area(value: Any) -> Any:
    if isinstance(value, PixelArea):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a fraction or {{pixels: N}}, got {str(value).lower()}")
    if isinstance(value, int | float):
        if not 0 <= value < 1:
            raise ValueError(
                f"{value} is not a fraction of the frame area (0 <= x < 1); "
                f"for a pixel count write {{pixels: {max(int(value), 0)}}}"
            )
        return float(value)
    if isinstance(value, Mapping):
        if unknown := [str(k) for k in value if k != "pixels"]:
            raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; write {{pixels: N}}")
        try:
            return PixelArea.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"expected {{pixels: N}} with N a whole number >= 0 ({where}: {err['msg']})") from None
    raise ValueError("expected a fraction of the frame area (0 <= x < 1) or {pixels: N}")


# A plain number is always a fraction of the frame; pixels are always spelled {pixels: N}.
AreaThreshold = Annotated[float | PixelArea, BeforeValidator(_parse_area)]


def _check_band(min_score: float | None, review_min_score: float | None) -> None:
    if min_score is not None and review_min_score is not None and review_min_score > min_score:
        raise ValueError(
            f"review_min_score {review_min_score} is above min_score {min_score}; "
            "the review band is [review_min_score, min_score)"
        )


class LabelRule(_Strict):
    """Rules of one label; unset fields are inherited (see module docstring)."""

    severity: Severity | None = None
    min_score: Score | None = None
    review_min_score: Score | None = None
    min_box_area: AreaThreshold | None = None

    @model_validator(mode="after")
    def _band(self) -> LabelRule:
        _check_band(self.min_score, self.review_min_score)
        return self


def _none_is_empty(value: Any) -> Any:
    # `gate-2:` with nothing under it is an empty override, not an error.
    return {} if value is None else value


class RuleBlock(_Strict):
    """``defaults:`` or one camera override; every field optional so overrides can be partial."""

    min_score: Score | None = None
    review_min_score: Score | None = None
    min_box_area: AreaThreshold | None = None
    labels: dict[str, Annotated[LabelRule, BeforeValidator(_none_is_empty)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _band(self) -> RuleBlock:
        _check_band(self.min_score, self.review_min_score)
        return self


CameraBlocks = dict[str, Annotated[RuleBlock, BeforeValidator(_none_is_empty)]]


class RuleFile(_Strict):
    """One YAML file of the rules repo."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    defaults: RuleBlock | None = None
    cameras: CameraBlocks = Field(default_factory=dict)


class LabelPolicy(_Strict):
    """Fully resolved rules of one label on one camera, with the rule path each value came from."""

    severity: Severity
    min_score: float
    review_min_score: float  # == min_score when the band is off
    min_box_area: float | PixelArea  # 0.0 when off
    severity_from: str
    min_score_from: str
    review_min_score_from: str
    min_box_area_from: str


class EffectiveRules(_Strict):
    """The rules one camera is judged by: a label -> policy table built once per camera."""

    rule_path: str
    labels: dict[str, LabelPolicy]
    other: LabelPolicy  # labels not listed anywhere: severity ignore

    def policy(self, label: str) -> LabelPolicy:
        return self.labels.get(label, self.other)


class RuleSet(_Strict):
    """All rules of a repo, merged. ``origins`` maps a rule path to the file that defined it."""

    defaults: RuleBlock = Field(default_factory=RuleBlock)
    cameras: CameraBlocks = Field(default_factory=dict)
    origins: dict[str, str] = Field(default_factory=dict)

    # Resolved once per camera: judging must stay far below a millisecond per alarm.
    _effective: dict[str, EffectiveRules] = PrivateAttr(default_factory=dict)

    def rule_path(self, camera: str) -> str:
        return f"cameras/{camera}" if camera in self.cameras else DEFAULTS_PATH

    def for_camera(self, camera: str) -> EffectiveRules:
        path = self.rule_path(camera)
        eff = self._effective.get(path)
        if eff is None:
            eff = self._resolve(path, self.cameras.get(camera))
            self._effective[path] = eff
        return eff

    def _resolve(self, path: str, camera_block: RuleBlock | None) -> EffectiveRules:
        # Most specific layer first; the built-in block is reported as "defaults" too.
        layers: list[tuple[RuleBlock, str]] = [
            (self.defaults, DEFAULTS_PATH),
            (BUILTIN_DEFAULTS, DEFAULTS_PATH),
        ]
        if camera_block is not None:
            layers.insert(0, (camera_block, path))

        def block_value(name: str) -> tuple[Any, str]:
            for block, src in layers:
                value = getattr(block, name)
                if value is not None:
                    return value, src
            raise AssertionError(f"built-in defaults lack {name}")  # default_rules.yaml sets them all

        def policy(label: str | None) -> LabelPolicy:
            found: dict[str, tuple[Any, str]] = {}
            for name in ("severity", "min_score", "review_min_score", "min_box_area"):
                for block, src in layers:
                    rule = block.labels.get(label) if label is not None else None
                    if rule is not None and getattr(rule, name) is not None:
                        found[name] = (getattr(rule, name), src)
                        break
                else:
                    found[name] = ("ignore", DEFAULTS_PATH) if name == "severity" else block_value(name)
            min_score, min_src = found["min_score"]
            review, review_src = found["review_min_score"]
            if review > min_score:  # set in different layers: an empty band, not an error
                review, review_src = min_score, min_src
            return LabelPolicy(
                severity=found["severity"][0],
                min_score=min_score,
                review_min_score=review,
                min_box_area=found["min_box_area"][0],
                severity_from=found["severity"][1],
                min_score_from=min_src,
                review_min_score_from=review_src,
                min_box_area_from=found["min_box_area"][1],
            )

        names = sorted({label for block, _ in layers for label in block.labels})
        return EffectiveRules(rule_path=path, labels={n: policy(n) for n in names}, other=policy(None))

    def warm(self) -> RuleSet:
        """Resolve every camera now (done by :func:`load_rules`)."""
        self.for_camera("\0no-such-camera")
        for camera in self.cameras:
            self.for_camera(camera)
        return self


# --- YAML parsing with line numbers ---------------------------------------------------------


class _DuplicateKeyError(ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first written on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(file: str, raw: bytes) -> tuple[Any, Node | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesError(
            file, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save it as UTF-8"
        ) from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, _DuplicateKeyError):
            raise RulesError(file, line, "", str(exc.problem), "keep only one of the two entries") from None
        problem = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise RulesError(
            file,
            line,
            "",
            f"invalid YAML: {problem}",
            "fix the YAML syntax at that line (indentation, ':' and quotes)",
        ) from None
    except yaml.YAMLError as exc:
        raise RulesError(file, None, "", f"invalid YAML: {exc}", "fix the YAML syntax") from None
    finally:
        loader.dispose()
    return data, node


def _line_of(root: Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest key of ``loc`` found in the YAML node tree (1-based)."""
    if root is None:
        return None
    node: Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                    node, line = value_node, key_node.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            models = [a for a in get_args(tp) if a is not type(None)]
            tp = next((a for a in models if isinstance(a, type) and issubclass(a, BaseModel)), models[0])
        else:
            return tp


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema model that a validation error location points into (for 'allowed fields')."""
    tp: Any = RuleFile
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _fix_for(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model is not None else "see the defaults file"
        return f"remove {loc[-1]!r} or correct its spelling; allowed here: {allowed}"
    if kind == "literal_error":
        return f"use one of {err.get('ctx', {}).get('expected', 'the listed values')}"
    if kind in ("greater_than_equal", "less_than_equal", "float_parsing", "float_type", "value_error") and (
        loc and str(loc[-1]).endswith("min_score")
    ):
        return "use a detector score between 0 and 1, e.g. 0.5"
    if loc and loc[-1] == "min_box_area":
        return "write a fraction of the frame area like 0.0005, or {pixels: 400}"
    if kind == "value_error" and "review band" in str(err.get("msg", "")):
        return "lower review_min_score or raise min_score (equal values switch the band off)"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "write a mapping here (indented `name: value` lines)"
    return _HELP


def _from_validation(file: str, root: Node | None, exc: ValidationError) -> RulesError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if p != "[key]")
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = f"unknown field {loc[-1]!r}"
    if len(errors) > 1:
        others = "; ".join(".".join(str(p) for p in e["loc"]) for e in errors[1:4])
        reason += f" (and {len(errors) - 1} more: {others})"
    return RulesError(file, _line_of(root, loc), ".".join(str(p) for p in loc), reason, _fix_for(first))


def _check_labels(file: str, root: Node | None, rf: RuleFile, allowed: list[str]) -> None:
    known = set(allowed)
    blocks = [(("defaults",), rf.defaults)] if rf.defaults is not None else []
    blocks += [(("cameras", cam), block) for cam, block in rf.cameras.items()]
    for prefix, block in blocks:
        for label in block.labels:
            if label in known:
                continue
            close = difflib.get_close_matches(label, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            loc = (*prefix, "labels", label)
            raise RulesError(
                file,
                _line_of(root, loc),
                ".".join(loc),
                f"unknown label {label!r}{hint}",
                f"use a label the detector knows: {', '.join(allowed)}",
            )


def load_rules(files: Mapping[str, bytes], *, known_labels: Collection[str]) -> RuleSet:
    """Merge every ``*.yaml``/``*.yml`` of a rules repo (path -> content) into one :class:`RuleSet`.

    Raises :class:`RulesError` naming file, line and field on any problem, including a camera (or
    ``defaults``) defined in two files and labels outside ``known_labels`` (the detector's labels).
    """
    allowed = list(dict.fromkeys(known_labels))
    defaults: RuleBlock | None = None
    cameras: dict[str, RuleBlock] = {}
    origins: dict[str, str] = {}
    for file in sorted(files):
        if not file.lower().endswith((".yaml", ".yml")):
            continue
        data, root = _parse_yaml(file, files[file])
        if data is None:  # empty or comments only
            continue
        if not isinstance(data, dict):
            raise RulesError(
                file,
                1,
                "",
                f"top level is a {type(data).__name__}",
                "write a mapping with `defaults:` and/or `cameras:`",
            )
        try:
            rf = RuleFile.model_validate(data)
        except ValidationError as exc:
            raise _from_validation(file, root, exc) from None
        _check_labels(file, root, rf, allowed)
        if rf.defaults is not None:
            if DEFAULTS_PATH in origins:
                raise RulesError(
                    file,
                    _line_of(root, ("defaults",)),
                    "defaults",
                    f"`defaults` is defined in both {origins[DEFAULTS_PATH]} and {file}",
                    "keep a single `defaults:` block in the rules repo",
                )
            defaults, origins[DEFAULTS_PATH] = rf.defaults, file
        for camera, block in rf.cameras.items():
            path = f"cameras/{camera}"
            if path in origins:
                raise RulesError(
                    file,
                    _line_of(root, ("cameras", camera)),
                    f"cameras.{camera}",
                    f"camera {camera!r} is defined in both {origins[path]} and {file}",
                    "define each camera in exactly one file (merge the two blocks)",
                )
            cameras[camera], origins[path] = block, file
    return RuleSet(defaults=defaults or RuleBlock(), cameras=cameras, origins=origins).warm()


def _read_default_yaml() -> str:
    return importlib.resources.files("alarmsieve.rules").joinpath("default_rules.yaml").read_text("utf-8")


DEFAULT_RULES_YAML: str = _read_default_yaml()


# The shipped file is the single source of the built-in values (validated once at import).
def _builtin_defaults() -> RuleBlock:
    parsed = RuleFile.model_validate(_parse_yaml("default_rules.yaml", DEFAULT_RULES_YAML.encode())[0])
    block = parsed.defaults
    if block is None or None in (block.min_score, block.review_min_score, block.min_box_area):
        raise RuntimeError("default_rules.yaml must set defaults.min_score, review_min_score and min_box_area")
    return block


BUILTIN_DEFAULTS: RuleBlock = _builtin_defaults()
