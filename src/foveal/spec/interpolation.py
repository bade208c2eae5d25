"""OmegaConf semantics for spec values, as TAO's loader has them.

TAO specs are OmegaConf documents: ``${a.b}`` refers to another key (after overrides, defaults
included), ``???`` marks a value the user must supply, and TAO registers an ``eval`` resolver for
arithmetic such as ``${eval: '2e-4 * (${dataset.batch_size} / 1024) ** (1/2)'}``. Foveal resolves
them with OmegaConf itself before the typed schema validates the result; ``eval`` is evaluated
here on a syntax tree that admits numbers, ``+ - * / // % **`` and parentheses only (never
Python's ``eval``).

Resolution is lazy in TAO: a reference that cannot resolve only fails when an action reads it.
:func:`interpolate` keeps that: a value that cannot resolve becomes :class:`Unresolved`, which
validation reports only when the action reads the key's section.
"""

from __future__ import annotations

import ast
import copy
import datetime
import difflib
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from foveal.errors import SpecIssue

MANDATORY = "???"
_REF = re.compile(r"\$\{([^${}:]+)\}")


@dataclass(frozen=True)
class Unresolved:
    """A value that could not be resolved: ``???`` left unset, or a reference that fails."""

    issue: SpecIssue
    mandatory: bool = False


class EvalError(ValueError):
    """An ``${eval: ...}`` expression outside the arithmetic Foveal evaluates."""


# ------------------------------------------------------------------------------------- eval


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 64  # 2 ** 64 is plenty for a spec; 9 ** 9 ** 9 is an attack


def safe_eval(expression: Any) -> int | float:
    """Evaluate TAO's ``eval`` resolver argument: numbers, ``+ - * / // % **`` and parentheses.

    Raises:
        EvalError: anything else (names, calls, attributes, strings, huge powers), or a
            division by zero.
    """
    if isinstance(expression, (int, float)) and not isinstance(expression, bool):
        return expression
    text = str(expression).strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise EvalError(f"{text!r} is not an arithmetic expression") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(
            node.value, bool
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > _MAX_EXPONENT or abs(left) > 1e12):
                raise EvalError(f"the power {left} ** {right} is too large")
            try:
                result: int | float = _BINARY[type(node.op)](left, right)
                return result
            except ZeroDivisionError:
                raise EvalError("it divides by zero") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            negated: int | float = _UNARY[type(node.op)](value(node.operand))
            return negated
        shown = ast.get_source_segment(text, node) or type(node).__name__
        raise EvalError(
            f"{shown!r} is not allowed (numbers, + - * / // % **, parentheses and ${{...}} references only)"
        )

    result = value(tree.body)
    if isinstance(result, complex):
        raise EvalError("the result is not a real number")
    return result


def _register_eval() -> None:
    from omegaconf import OmegaConf

    register = getattr(OmegaConf, "register_resolver", None)  # OmegaConf >= 2.4
    if register is not None:
        register("eval", safe_eval, replace=True, annotation_validation="off")
    else:  # OmegaConf 2.3
        OmegaConf.register_new_resolver("eval", safe_eval, replace=True)


# ------------------------------------------------------------------------------------ walk


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*path, i))
    else:
        yield path, data


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def needs_interpolation(data: Mapping[str, Any]) -> bool:
    return any(_special(value) for _, value in _leaves(data))


def _special(value: Any) -> bool:
    return isinstance(value, str) and (value.strip() == MANDATORY or "${" in value)


def _plain(data: Any) -> Any:
    """A copy OmegaConf accepts: values it has no node type for (YAML dates) become text."""
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if data is None or isinstance(data, (str, int, float, bool)):
        return data
    if isinstance(data, (datetime.date, datetime.datetime)):
        return data.isoformat()
    return str(data)


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _merge(base: Any, update: Any) -> Any:
    if isinstance(base, dict) and isinstance(update, Mapping):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(out[key], value) if key in out else value
        return out
    return update


# ------------------------------------------------------------------------------- resolution


def _unset_as_missing(data: Any) -> Any:
    """Empty values become ``???`` so that a reference to them fails instead of reading "None"."""
    if isinstance(data, dict):
        return {k: _unset_as_missing(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_unset_as_missing(v) for v in data]
    return MANDATORY if data is None else data


def _action_results_dirs(context: dict[str, Any]) -> None:
    """TAO's runtime rule, applied before references resolve: an action section's unset
    ``results_dir`` is ``<results_dir>/<section>``, so ``${export.results_dir}`` means that."""
    top = context.get("results_dir")
    if not isinstance(top, str) or not top or top.strip() == MANDATORY:
        return
    for name, section in context.items():
        if isinstance(section, dict) and "results_dir" in section and section["results_dir"] in (None, ""):
            section["results_dir"] = f"{top.rstrip('/')}/{name}"


def interpolate(
    data: Mapping[str, Any], defaults: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``data`` with every ``${...}`` resolved and every ``???`` marked, OmegaConf's way.

    References see the defaults under the data (a spec may refer to a key it does not set), and
    ``extra``: values given on the command line as Hydra's ``+name=value``, which only references
    read (TAO's templates use ``${root_dir}`` this way). A reference to an empty value fails, as
    one to ``???`` does. A value that cannot be resolved is replaced by :class:`Unresolved`
    holding the one-line issue; validation decides whether the action needs it.
    """
    out = copy.deepcopy(dict(data))
    special = [(path, value) for path, value in _leaves(out) if _special(value)]
    if not special:
        return out
    from omegaconf import OmegaConf

    _register_eval()
    merged = _merge(copy.deepcopy(dict(defaults)), out)
    _action_results_dirs(merged)
    merged = _merge(merged, copy.deepcopy(dict(extra or {})))
    context = OmegaConf.create(_plain(_unset_as_missing(merged)))
    known = [dotted(p) for p, _ in _leaves(OmegaConf.to_container(context, resolve=False))]
    for path, raw in special:
        key = dotted(path)
        if raw.strip() == MANDATORY:
            _set(out, path, Unresolved(SpecIssue(key, "mandatory value (???) not set", f"set {key}=..."), True))
            continue
        try:
            node: Any = context
            for part in path:
                node = node[part]
            if OmegaConf.is_config(node):
                node = OmegaConf.to_container(node, resolve=True)
            _set(out, path, node)
        except Exception as exc:  # noqa: BLE001 - OmegaConf raises many kinds; each becomes one line
            _set(out, path, Unresolved(_issue(key, raw, exc, known)))
    return out


def _issue(key: str, raw: str, exc: BaseException, known: list[str]) -> SpecIssue:
    from omegaconf.errors import InterpolationKeyError, InterpolationToMissingValueError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, EvalError):
            return SpecIssue(key, f"{raw}: {cause}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, InterpolationToMissingValueError):
        missing = _first_missing(raw)
        where = f"{missing}, which is" if missing else "a value"
        return SpecIssue(key, f"{raw} refers to {where} not set", f"set {missing or key}=...")
    if isinstance(exc, InterpolationKeyError):
        match = re.search(r"'([^']+)'", str(exc))
        name = match.group(1) if match else raw
        last = name.rsplit(".", 1)[-1]
        near = [k for k in known if k.rsplit(".", 1)[-1] == last] or difflib.get_close_matches(
            name, known, n=1
        )
        hint = f"did you mean ${{{near[0]}}}?" if near else "refer to a key of this spec, e.g. ${dataset.batch_size}"
        return SpecIssue(key, f"{raw} refers to {name}, which is not a key of this spec", hint)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SpecIssue(key, f"cannot resolve {raw}: {first}", "write ${section.key} references or a plain value")


def _first_missing(raw: str) -> str:
    refs = _REF.findall(raw)
    return refs[0].strip() if len(refs) == 1 else ""
