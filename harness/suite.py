"""Suites: YAML files validated (schema, then every plugin and its parameters) before anything
runs, with errors that name the file, the line and the field."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, field_validator,
                      model_validator)

from .errors import ParamError, PluginError, SuiteError
from .records import baseline_label, transfer_label  # noqa: F401 (kept importable from here)

Loc = tuple[Any, ...]

#: the model id of a transfer test's baseline case
BASELINE = "(baseline)"

#: suite names, test names and model ids: they name folders and files of the run folder
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: the longest name (a figure's path holds a test name and a model id, and each part of a
#: path must stay under the file system's 255 bytes)
MAX_NAME = 100


def check_name(value: Any) -> str:
    """``value`` if it is a valid name (one line of letters, digits and ``. _ + -``, starting
    with a letter or digit, at most :data:`MAX_NAME` characters), else ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError("use letters, digits and . _ + - only, starting with a letter or digit")
    if len(value) > MAX_NAME:
        raise ValueError(f"{len(value)} characters is too long (at most {MAX_NAME})")
    return value


def check_line(value: str) -> str:
    """``value`` if it is one line of text without control characters, else ValueError."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        bad = next(ch for ch in value if ord(ch) < 32 or ord(ch) == 127)
        raise ValueError(f"must be one line without control characters (it holds {bad!r})")
    return value


#: one line of text (titles, headers, labels)
Line = Annotated[str, AfterValidator(check_line)]


# --------------------------------------------------------------------------- YAML with lines

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-5`` as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: str,
          loader: _Loader) -> Any:
    """Build Python values from a composed YAML node, recording each location's line."""
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor) come first; explicit
        merged = len(node.value) - explicit  # keys may override them
        out: dict[Any, Any] = {}
        written: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SuiteError("keys must be plain names", file=file,
                                 line=key_node.start_mark.line + 1)
            if key in written:
                raise SuiteError(f"duplicate key {key!r}", file=file,
                                 line=key_node.start_mark.line + 1, field=_field(loc + (key,)))
            if index >= merged:
                written.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, loc + (key,), lines, file, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, loc + (i,), lines, file, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """Parse ``text``; return the data and a map from location tuples to line numbers."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, file) from None
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}
        data = None if node is None else _walk(node, (), lines, file, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = f"not valid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark and exc.problem_mark \
                and exc.context_mark.line != exc.problem_mark.line:
            msg += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise SuiteError(msg, file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, file) from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise SuiteError(f"not valid YAML: {first}", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _reader_error(exc: Any, text: str, file: str) -> SuiteError:
    """One line for a character YAML refuses (a control character such as \\x07)."""
    pos = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = exc.character
    shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
    return SuiteError(f"not valid YAML: the control character {shown} at column {column} is "
                      "not allowed", file=file, line=line,
                      hint="names and values are one line of printable text")


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --------------------------------------------------------------------------- schema

class Spec(dict):
    """A plugin reference: ``{use: name, **params}``, or just ``name``."""

    @property
    def use(self) -> str:
        return self["use"]

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.items() if k != "use"}

    @classmethod
    def coerce(cls, value: Any) -> "Spec":
        if isinstance(value, str):
            return cls(use=value)
        if isinstance(value, dict):
            if "use" not in value:
                raise ValueError("needs a 'use' key naming the plugin")
            if not isinstance(value["use"], str):
                raise ValueError("'use' must name a plugin")
            return cls(value)
        raise ValueError("must be a plugin name or a mapping with 'use'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, arbitrary_types_allowed=True)


def _spec(v: Any) -> Spec | None:
    return None if v is None else Spec.coerce(v)


class TestConfig(_Strict):
    name: str
    attack: Any = None
    analysis: Any = None
    models: list[str] | None = None
    data: Any = None
    metrics: list[Any] | None = None
    description: str | None = None
    #: transfer: feed the examples made for each of ``models`` to these models ("all": every
    #: model of the suite)
    transfer: Literal["all"] | list[str] | None = None
    #: transfer: an attack that needs no model (noise), made once and fed to every target
    baseline: Any = None
    #: transfer: also the same perturbations scaled to these distortions, clipped to [0, 1]
    amplify: list[float] | None = None
    #: attack tests: a picture of this many examples per model (original, perturbation,
    #: adversarial), as the paper's Fig. 5
    pictures: int = Field(default=0, ge=0, le=64)
    #: images per chunk (the unit of saved progress, resume and sharding); default: the
    #: attack's batch size, capped by memory
    chunk_size: int | None = Field(default=None, ge=1)

    @field_validator("analysis", "data", "baseline", mode="before")
    @classmethod
    def _specs(cls, v: Any) -> Spec | None:
        return _spec(v)

    @field_validator("attack", mode="before")
    @classmethod
    def _attacks(cls, v: Any) -> Any:
        """One attack, or a list of them (the test then also reports, per image, the worst
        case over them)."""
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list of attacks")
            return [Spec.coerce(a) for a in v]
        return _spec(v)

    @property
    def attacks(self) -> list[Spec]:
        """The test's attacks (none, one, or several)."""
        if self.attack is None:
            return []
        return list(self.attack) if isinstance(self.attack, list) else [self.attack]

    @model_validator(mode="after")
    def _one_kind(self) -> "TestConfig":
        if self.attack is not None and self.analysis is not None:
            raise ValueError("a test has an attack or an analysis, not both")
        if self.analysis is not None and self.metrics is not None:
            raise ValueError("an analysis test reports its own metrics; remove 'metrics'")
        if self.transfer is None and (self.baseline is not None or self.amplify is not None):
            raise ValueError("'baseline' and 'amplify' belong to transfer tests (add 'transfer')")
        if self.transfer is not None and self.attack is None:
            raise ValueError("a transfer test needs an attack to make the examples with")
        if self.transfer is not None and isinstance(self.attack, list):
            raise ValueError("a transfer test makes its examples with one attack, not a list")
        if self.transfer is not None and self.metrics is not None:
            raise ValueError("a transfer test reports adv_error and mean_distortion; "
                             "remove 'metrics'")
        if any(not a > 0 for a in self.amplify or []):
            raise ValueError("amplify values are distortions, which must be > 0")
        return self

    def targets(self, suite_models: list[str]) -> list[str]:
        """The models a transfer test feeds its examples to."""
        if self.transfer == "all":
            return list(suite_models)
        return list(self.transfer or [])

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, list):
            raise ValueError("must be a list of metric names")
        return [Spec.coerce(m) for m in v]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class GateConfig(_Strict):
    test: str
    model: str
    metric: str
    param: str | None = None
    min: float | None = None
    max: float | None = None
    #: regression gate: fail when the value is worse than the baseline run's by more than this
    max_drop: float | None = Field(default=None, ge=0)
    #: how max_drop is measured: relative to the baseline value, or in the metric's units
    drop: Literal["relative", "absolute"] = "relative"
    #: what min/max judge: the value, or the lower/upper bound of its 95% interval
    bound: Literal["value", "lower", "upper"] = "value"
    #: max_drop as a paired test on the images both runs share (McNemar's exact test for
    #: rates, a paired bootstrap for means): fail only on a significant worsening
    paired: bool = False
    #: the paired test's significance level
    alpha: float = Field(default=0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _paired(self) -> "GateConfig":
        if self.paired and self.max_drop is None:
            raise ValueError("'paired' goes with 'max_drop' (a comparison with a baseline run)")
        if self.bound != "value" and self.min is None and self.max is None:
            raise ValueError("'bound' says what 'min' or 'max' judge; give one of them")
        return self


class ColumnConfig(_Strict):
    test: str
    metric: str
    header: Line | None = None
    param: str | None = None
    format: Literal["percent", "number", "seconds"] | None = None


class ReferenceConfig(_Strict):
    source: Line
    rows: dict[str, list[float | None]]


class MatrixConfig(_Strict):
    """A transfer test as a matrix: rows are the examples' origins (``made_for=<id>``,
    amplified rows, baseline rows), columns the models fed, then the average distortion."""

    test: str
    metric: str = "adv_error"
    models: list[str] | None = None
    distortion: bool = True


class TableConfig(_Strict):
    """A composed table. Rows are model ids, or settings (``param`` values such as
    ``layer=features.0``) when ``model`` is given or for a ``matrix``."""

    title: Line
    columns: list[ColumnConfig] | None = Field(default=None, min_length=1)
    matrix: MatrixConfig | None = None
    model: str | None = None
    rows: list[str] | None = None
    labels: dict[str, Line] | None = None
    reference: ReferenceConfig | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _layout(self) -> "TableConfig":
        if (self.columns is None) == (self.matrix is None):
            raise ValueError("a table has either 'columns' or a 'matrix'")
        if self.matrix is not None and self.model is not None:
            raise ValueError("'model' goes with 'columns', not with a 'matrix'")
        return self

    @property
    def rows_are_models(self) -> bool:
        return self.matrix is None and self.model is None


class Suite(_Strict):
    name: str
    description: str | None = None
    seed: int = 0
    device: str = "auto"
    data: Any = None
    models: dict[str, Any] = Field(min_length=1)
    tests: list[TestConfig] = Field(min_length=1)
    gates: list[GateConfig] = []
    tables: list[TableConfig] = []
    #: images per chunk for every test that does not set its own
    chunk_size: int | None = Field(default=None, ge=1)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v: Any) -> Spec | None:
        return _spec(v)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {k: Spec.coerce(s) for k, s in v.items()}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_name(v)
        except ValueError as exc:
            raise ValueError(f"{exc} (it names the run folder)") from None

    # filled in by load_suite
    _file: str = ""
    _text: str = ""
    #: the plugins check_plugins built (when parsed with a registry)
    _built: dict[Loc, Any] | None = None
    _lines: dict[Loc, int] = {}
    _code: list[Any] = []

    @property
    def code(self) -> list["CodeRef"]:
        """The code (``package.module:callable``) the suite's plugins will import and call, as
        its parameters name it (known once its plugins were checked)."""
        return list(self._code)

    @property
    def file(self) -> str:
        return self._file

    @property
    def text(self) -> str:
        return self._text

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest enclosing location."""
        for i in range(len(loc), -1, -1):
            if loc[:i] in self._lines:
                return self._lines[loc[:i]]
        return None

    def error(self, loc: Loc, message: str, hint: str | None = None) -> SuiteError:
        return SuiteError(message, file=self._file, line=self.line(loc), field=_field(loc) or None,
                          hint=hint)

    def test_data(self, test: TestConfig) -> Spec | None:
        return test.data or self.data

    def test_models(self, test: TestConfig) -> list[str]:
        return list(test.models) if test.models is not None else list(self.models)


DEFAULT_METRICS_ATTACK = ["clean_error", "adv_error", "success_rate", "mean_distortion", "seconds"]
DEFAULT_METRICS_CLEAN = ["clean_error"]


TRANSFER_METRICS = ["adv_error", "mean_distortion"]


def metric_specs(test: TestConfig) -> list[Spec]:
    """The metrics a test computes (an analysis test reports its own: none here)."""
    if test.analysis is not None:
        return []
    if test.transfer is not None:
        return [Spec(use=n) for n in TRANSFER_METRICS]
    if test.metrics is not None:
        return list(test.metrics)
    names = DEFAULT_METRICS_ATTACK if test.attack is not None else DEFAULT_METRICS_CLEAN
    return [Spec(use=n) for n in names]


# --------------------------------------------------------------------------- loading

def _pydantic_error(exc: pydantic.ValidationError, data: Any, lines: dict[Loc, int],
                    file: str) -> SuiteError:
    errors = exc.errors()
    # an unknown key explains a "missing" one next to it (a misspelt name), so report it first
    err = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = tuple(err["loc"])
    kind = err["type"]
    line = None
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            line = lines[loc[:i]]
            break
    if kind == "extra_forbidden":
        parent_fields = _allowed_fields(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        hint += f"allowed keys: {', '.join(parent_fields)}" if parent_fields else ""
        return SuiteError(f"unknown key {loc[-1]!r}", file=file, line=line, field=_field(loc),
                          hint=hint or None)
    if kind == "missing":
        return SuiteError(f"missing required key {loc[-1]!r}", file=file, line=line,
                          field=_field(loc))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    if kind not in ("value_error",) and not isinstance(got, (dict, list)):
        msg = f"{msg[0].lower()}{msg[1:]} (got {got!r})"
    return SuiteError(msg, file=file, line=line, field=_field(loc) or None)


def _allowed_fields(loc: Loc) -> list[str]:
    model: type[BaseModel] | None = Suite
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        model = None
        for cand in (TestConfig, GateConfig, ColumnConfig, TableConfig, ReferenceConfig):
            if ann is cand or cand in getattr(ann, "__args__", ()):
                model = cand
            elif any(cand in getattr(a, "__args__", ()) for a in getattr(ann, "__args__", ())):
                model = cand
    return list(model.model_fields) if model is not None else []


def parse_suite(text: str, file: str = "<suite>", registry: Any = None,
                allow: list[str] | None = None) -> Suite:
    """Schema-check a suite's text, then (with a registry) every plugin it names. ``allow``:
    the packages whose code (model factories...) the suite may name; None: any."""
    data, lines = load_yaml(text, file)
    if not isinstance(data, dict):
        raise SuiteError("a suite is a mapping with at least name, models and tests", file=file,
                         line=1)
    try:
        suite = Suite.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc, data, lines, file) from None
    suite._file, suite._text, suite._lines = file, text, lines
    _check_references(suite)
    if registry is not None:
        built = check_plugins(suite, registry)
        suite._built = built
        suite._code = code_refs(suite, built)
        check_code(suite, allow)
    _check_outputs(suite)
    if registry is not None:
        from .plan import Plan

        Plan(suite, registry).check_gates()
    return suite


# --------------------------------------------------------------------------- code in suites

#: comma-separated packages whose code (model factories...) suites may name; unset: any
ALLOW_ENV = "HARNESS_ALLOW_FACTORIES"


@dataclass(frozen=True)
class CodeRef:
    """Code a suite makes the harness import and call: ``target`` (``package.module:callable``)
    from parameter ``loc`` of ``plugin``."""

    loc: Loc
    line: int | None
    target: str
    plugin: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]


def code_refs(suite: Suite, built: dict[Loc, Any]) -> list[CodeRef]:
    from .base import plugin_label

    out = []
    for loc, obj in built.items():
        for param, target in obj.code():
            out.append(CodeRef(loc + (param,), suite.line(loc + (param,)), target,
                               plugin_label(obj)))
    return out


def allowed_code(no_code: bool = False) -> list[str] | None:
    """The packages whose code suites may name: none with ``no_code``, else those of
    ``$HARNESS_ALLOW_FACTORIES`` (comma-separated; empty: none), else any (None)."""
    if no_code:
        return []
    env = os.environ.get(ALLOW_ENV)
    if env is None:
        return None
    return [p.strip() for p in env.split(",") if p.strip()]


def check_code(suite: Suite, allow: list[str] | None) -> None:
    """Refuse (one line, before anything is imported) code outside the ``allow``ed packages:
    ``pkg`` allows ``pkg`` and ``pkg.anything``."""
    if allow is None:
        return
    for ref in suite.code:
        if any(ref.module == p or ref.module.startswith(p + ".") for p in allow):
            continue
        why = ("--no-code refuses every suite that names code to run" if not allow
               else f"{ALLOW_ENV} allows only {', '.join(allow)}")
        raise suite.error(ref.loc, f"{ref.target!r} is code this suite would import and run, "
                                   f"and {why}",
                          hint="run only suites you would run as code; if you trust this one, "
                               f"add its package to {ALLOW_ENV}")


def _check_references(suite: Suite) -> None:
    """Names that must refer to something else in the suite."""
    for mid in suite.models:
        try:
            check_name(mid)
        except ValueError as exc:
            raise suite.error(("models", mid), f"model id {str(mid)[:40]!r}"
                                               f"{'...' if len(str(mid)) > 40 else ''}: {exc}"
                              ) from None
    seen: dict[str, int] = {}
    for i, test in enumerate(suite.tests):
        if test.name in seen:
            raise suite.error(("tests", i, "name"), f"test name {test.name!r} is used twice",
                              hint=f"also at tests[{seen[test.name]}]")
        seen[test.name] = i
        for j, mid in enumerate(test.models or []):
            if mid not in suite.models:
                raise suite.error(("tests", i, "models", j), f"unknown model id {mid!r}",
                                  hint=_choices(mid, suite.models, "models"))
        if isinstance(test.transfer, list):
            for j, mid in enumerate(test.transfer):
                if mid not in suite.models:
                    raise suite.error(("tests", i, "transfer", j), f"unknown model id {mid!r}",
                                      hint=_choices(mid, suite.models, "models"))
        if suite.test_data(test) is None and test.analysis is None:
            raise suite.error(("tests", i), f"test {test.name!r} has no data",
                              hint="give the test a 'data' key or the suite a top-level 'data'")


def _check_outputs(suite: Suite) -> None:
    """Gates and tables must name tests, models and metrics the suite has."""
    seen = {t.name: i for i, t in enumerate(suite.tests)}
    for i, gate in enumerate(suite.gates):
        if gate.test not in seen:
            raise suite.error(("gates", i, "test"), f"unknown test {gate.test!r}",
                              hint=_choices(gate.test, seen, "tests"))
        if gate.model not in suite.models:
            raise suite.error(("gates", i, "model"), f"unknown model id {gate.model!r}",
                              hint=_choices(gate.model, suite.models, "models"))
        test = suite.tests[seen[gate.test]]
        runs = suite.test_models(test) + test.targets(list(suite.models))
        if gate.model not in runs:
            raise suite.error(("gates", i, "model"),
                              f"test {gate.test!r} does not run model {gate.model!r}")
        metric_names = [m.use for m in metric_specs(test)]
        if test.analysis is None and gate.metric not in metric_names:
            raise suite.error(("gates", i, "metric"),
                              f"test {gate.test!r} does not compute metric {gate.metric!r}",
                              hint=f"it computes: {', '.join(metric_names)}")
        if gate.min is None and gate.max is None and gate.max_drop is None:
            raise suite.error(("gates", i), "a gate needs 'min', 'max' or 'max_drop'")
    for i, table in enumerate(suite.tables):
        for j, col in enumerate(table.columns or []):
            if col.test not in seen:
                raise suite.error(("tables", i, "columns", j, "test"), f"unknown test {col.test!r}",
                                  hint=_choices(col.test, seen, "tests"))
        n_columns = len(table.columns or [])
        if table.matrix is not None:
            m = table.matrix
            if m.test not in seen:
                raise suite.error(("tables", i, "matrix", "test"), f"unknown test {m.test!r}",
                                  hint=_choices(m.test, seen, "tests"))
            test = suite.tests[seen[m.test]]
            if test.transfer is None:
                raise suite.error(("tables", i, "matrix", "test"),
                                  f"test {m.test!r} is not a transfer test")
            targets = test.targets(list(suite.models))
            for j, mid in enumerate(m.models or []):
                if mid not in targets:
                    raise suite.error(("tables", i, "matrix", "models", j),
                                      f"test {m.test!r} does not feed model {mid!r}",
                                      hint=_choices(mid, targets, "it feeds"))
            n_columns = len(m.models or targets) + (1 if m.distortion else 0)
        for mid in [table.model] if table.model else []:
            if mid not in suite.models:
                raise suite.error(("tables", i, "model"), f"unknown model id {mid!r}",
                                  hint=_choices(mid, suite.models, "models"))
        if table.rows_are_models:
            for j, mid in enumerate(table.rows or []):
                if mid not in suite.models:
                    raise suite.error(("tables", i, "rows", j), f"unknown model id {mid!r}",
                                      hint=_choices(mid, suite.models, "models"))
        if table.reference:
            for row, values in table.reference.rows.items():
                loc = ("tables", i, "reference", "rows", row)
                if table.rows_are_models and row not in suite.models:
                    raise suite.error(loc, f"unknown model id {row!r}",
                                      hint=_choices(row, suite.models, "models"))
                if not table.rows_are_models and table.rows and row not in table.rows:
                    raise suite.error(loc, f"{row!r} is not one of the table's rows",
                                      hint=_choices(row, table.rows, "rows"))
                if len(values) != n_columns:
                    raise suite.error(loc, f"{len(values)} reference values for "
                                           f"{n_columns} columns")


def _choices(name: str, options: Any, what: str) -> str:
    options = list(options)
    close = difflib.get_close_matches(str(name), options, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return hint + f"{what}: {', '.join(map(str, options))}"


def check_plugins(suite: Suite, registry: Any) -> dict[str, Any]:
    """Build every plugin the suite names (cheap: constructors only) so that unknown plugins
    and bad parameters are reported with their line before anything runs.

    Returns the built instances by location key: ``("models", id)``, ``("tests", i, "attack")``,
    ``("tests", i, "metrics", j)``, ``("data",)`` and ``("tests", i, "data")``.
    """
    built: dict[Loc, Any] = {}

    def build(kind: str, loc: Loc, spec: Spec) -> None:
        try:
            built[loc] = obj = registry.build(kind, spec.use, spec.params)
        except PluginError as exc:
            raise suite.error(loc + ("use",), exc.message, hint=exc.hint) from None
        except ParamError as exc:
            where = loc + (exc.param,) if exc.param in spec else loc + ("use",)
            raise suite.error(where, exc.message, hint=exc.hint) from None
        nested(obj, loc)

    def nested(obj: Any, loc: Loc) -> None:
        """Parameters that are plugin specs (``train: {use: mnist}``): checked like any
        plugin of the suite, on their own line."""
        from .params import spec_fields

        model, keys = type(obj).params_model()
        for field, kind in spec_fields(model).items():
            value = getattr(obj, field, None)
            if not isinstance(value, dict) or "use" not in value:
                continue
            key = keys.get(field, field)
            inner = Spec({k: v for k, v in value.items()})
            build(kind, loc + (key,), inner)
            built.pop(loc + (key,), None)   # checked only: its owner builds it when it runs

    if suite.data is not None:
        build("dataset", ("data",), suite.data)
    for mid, spec in suite.models.items():
        build("model", ("models", mid), spec)
    for i, test in enumerate(suite.tests):
        if test.data is not None:
            build("dataset", ("tests", i, "data"), test.data)
        if isinstance(test.attack, list):
            for j, spec in enumerate(test.attack):
                build("attack", ("tests", i, "attack", j), spec)
        elif test.attack is not None:
            build("attack", ("tests", i, "attack"), test.attack)
        if test.baseline is not None:
            build("attack", ("tests", i, "baseline"), test.baseline)
            if built[("tests", i, "baseline")].needs_gradients:
                raise suite.error(("tests", i, "baseline", "use"),
                                  f"attack {test.baseline.use!r} needs a model's gradients; a "
                                  "baseline is made once for all models",
                                  hint="use a model-free attack such as gaussian-noise")
        if test.analysis is not None:
            build("analysis", ("tests", i, "analysis"), test.analysis)
            if built[("tests", i, "analysis")].needs_data and suite.test_data(test) is None:
                raise suite.error(("tests", i), f"test {test.name!r} has no data, and analysis "
                                                f"{test.analysis.use!r} needs some",
                                  hint="give the test a 'data' key or the suite a top-level "
                                       "'data'")
        for j, spec in enumerate(metric_specs(test)):
            loc = ("tests", i, "metrics", j)
            build("metric", loc, spec)
            metric = built[loc]
            if metric.needs_attack and test.attack is None:
                raise suite.error(loc, f"metric {spec.use!r} needs an attack, and test "
                                       f"{test.name!r} has none")
    _check_classes(suite, built)
    for i, gate in enumerate(suite.gates):
        k = next((k for k, t in enumerate(suite.tests) if t.name == gate.test), None)
        if k is not None and gate.max_drop is not None:
            j = next((j for j, m in enumerate(metric_specs(suite.tests[k]))
                      if m.use == gate.metric), None)
            if j is not None and built[("tests", k, "metrics", j)].higher_is_better is None:
                raise suite.error(("gates", i, "max_drop"),
                                  f"metric {gate.metric!r} has no better direction, so a drop "
                                  "cannot be measured", hint="use min/max for it")
    return built


def _check_classes(suite: Suite, built: dict[Loc, Any]) -> None:
    """Values that cannot fit the data, where its dataset plugin knows how many classes it
    has without reading it (``target: 12`` with 10 classes): an error on their line."""
    for i, test in enumerate(suite.tests):
        data = built.get(("tests", i, "data")) or built.get(("data",))
        hint = getattr(data, "num_classes_hint", None)
        classes = hint() if callable(hint) else None
        if not classes:
            continue
        for loc, obj in built.items():
            if loc[:2] != ("tests", i) or len(loc) < 3 or loc[2] == "data":
                continue
            check = getattr(obj, "check_data", None)
            if not callable(check):
                continue
            try:
                check(classes)
            except ParamError as exc:
                raise suite.error(loc + ((exc.param,) if exc.param else ()), exc.message,
                                  hint=exc.hint) from None


def bundled_suites() -> dict[str, Path]:
    """The suites shipped with the harness (``suites/*.yaml``), by name."""
    import importlib.resources

    folders = [Path(__file__).resolve().parent.parent / "suites"]  # a source checkout
    try:
        folders.append(Path(str(importlib.resources.files("harness.suites"))))  # a wheel
    except (ModuleNotFoundError, TypeError):
        pass
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in sorted(folder.glob("*.yaml")):
                found.setdefault(p.stem, p)
    return found


def resolve_suite_path(path: str | Path) -> Path:
    """``path`` itself if it exists, else the bundled suite of that name (``quickstart``)."""
    p = Path(path)
    if p.exists() or p.suffix in (".yaml", ".yml") or "/" in str(path):
        return p
    return bundled_suites().get(str(path), p)


def load_suite(path: str | Path, registry: Any = None, *, no_code: bool = False) -> Suite:
    """Read, schema-check and (with a registry) plugin-check the suite at ``path`` (or the
    bundled suite of that name). Code it names (model factories) must be in the packages
    ``$HARNESS_ALLOW_FACTORIES`` allows, if set; ``no_code``: it may name none."""
    p = resolve_suite_path(path)
    if not p.exists():
        names = ", ".join(bundled_suites()) or "none"
        raise SuiteError("no such file", file=str(path),
                         hint=f"give the path of a suite YAML file, or a bundled suite: {names}")
    if p.is_dir():
        raise SuiteError("is a folder, not a suite file", file=str(path))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"cannot read: {exc}", file=str(path)) from None
    return parse_suite(text, str(p), registry, allowed_code(no_code))
