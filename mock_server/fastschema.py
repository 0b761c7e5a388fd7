"""Compile a JSON Schema (the small set of keywords the request and callback schemas use) into
a plain Python function (generated source, one straight-line test per keyword): the same verdict
as the jsonschema Validator of spec.py, about ten times faster, for the hot paths: upload-cover's
body, and every callback the fake sends (`checker`). Applicators (anyOf, oneOf, items, contains,
$ref to a sibling schema file) become generated functions of their own.

Only the verdict is compiled; the reasons for a rejection still come from jsonschema
(rules.diagnose). A schema with any other keyword raises Unsupported, and the caller falls
back to jsonschema. tests/test_rules_fast_path.py compares the two on generated bodies.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

import referencing.exceptions

from .spec import BASE, FORMATS, is_multiple, registry, schema, validator

ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "examples", "default"}
Check = Callable[[object], bool]


class Unsupported(ValueError):
    pass


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TYPES: dict[str, Check] = {
    "string": lambda x: isinstance(x, str),
    "number": _is_number,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
}


# The type tests written inline (no call) where Python's isinstance says it exactly.
_INLINE_TYPES = {
    "string": "isinstance({x}, str)",
    "number": "(isinstance({x}, (int, float)) and not isinstance({x}, bool))",
    "boolean": "isinstance({x}, bool)",
    "null": "{x} is None",
    "object": "isinstance({x}, dict)",
    "array": "isinstance({x}, list)",
}

# Bound keywords: (the values they apply to, what is compared, the comparison that fails it).
# Written as "not (x < bound)" rather than "x >= bound": jsonschema's way, which NaN passes.
_BOUNDS = {
    "minLength": ("isinstance({x}, str)", "len", "<"), "maxLength": ("isinstance({x}, str)", "len", ">"),
    "minItems": ("isinstance({x}, list)", "len", "<"), "maxItems": ("isinstance({x}, list)", "len", ">"),
    "minimum": ("_is_number({x})", "", "<"), "maximum": ("_is_number({x})", "", ">"),
    "exclusiveMinimum": ("_is_number({x})", "", "<="), "exclusiveMaximum": ("_is_number({x})", "", ">="),
}
DRAFT = "https://json-schema.org/draft/2020-12/schema"

FORMAT_MEMO_SIZE = 1024  # verdicts kept per process (clients send the same URLs again and again)
FORMAT_MEMO_MAX_LEN = 2048  # longer strings are checked every time
_format_memo: dict = {}


def format_ok(value, fmt: str) -> bool:
    """FORMATS.conforms, remembered for short strings (a format check is a pure function of the
    string, and the URI one is a large regular expression)."""
    if type(value) is not str or len(value) > FORMAT_MEMO_MAX_LEN:
        return FORMATS.conforms(value, fmt)
    memo_key = (fmt, value)
    verdict = _format_memo.get(memo_key)
    if verdict is None:
        verdict = _remember(memo_key, FORMATS.conforms(value, fmt))
    return verdict


def pattern_ok(rx: re.Pattern, value) -> bool:
    """`pattern` (a string only), remembered likewise (the URL pattern spells RFC 3986 out)."""
    if type(value) is not str:
        return not isinstance(value, str) or rx.search(value) is not None
    if len(value) > FORMAT_MEMO_MAX_LEN:
        return rx.search(value) is not None
    memo_key = (rx, value)
    verdict = _format_memo.get(memo_key)
    if verdict is None:
        verdict = _remember(memo_key, rx.search(value) is not None)
    return verdict


def _remember(memo_key: tuple, verdict: bool) -> bool:
    if len(_format_memo) >= FORMAT_MEMO_SIZE:
        _format_memo.clear()
    _format_memo[memo_key] = verdict
    return verdict


def _equal(a, b) -> bool:
    """JSON equality for scalars: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        raise Unsupported("const/enum over objects or arrays")
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


class _Gen:
    """Writes one Python function per schema: straight-line tests, no per-keyword calls (a
    subschema under an applicator gets a function of its own)."""

    def __init__(self, resolver=None, memo: bool = True):
        self.memo = memo  # format verdicts through the memo (values that come again and again)
        self.lines: list[str] = []
        self.defs: list[str] = []  # the subschemas' functions
        self.env: dict = {"_TYPES": _TYPES, "_equal": _equal, "_is_number": _is_number,
                          "is_multiple": is_multiple, "format_ok": format_ok, "pattern_ok": pattern_ok,
                          "_conforms": FORMATS.conforms}
        self.n = 0
        self.resolver = resolver  # resolves $ref (referencing.Resolver), None: no $ref
        self.refs: dict[int, str] = {}  # id of a $ref's target schema -> its function's name
        self.roots: set[int] = set()  # ids of the resources' roots (where $id may be)

    def function(self, sch: dict) -> str:
        """The name of a new generated function testing `sch`."""
        self.n += 1
        name = f"_f{self.n}"
        outer, self.lines = self.lines, []
        self.emit(0, f"def {name}(x):")
        self.schema(sch, "x", 1)
        self.emit(1, "return True")
        self.defs.append("\n".join(self.lines))
        self.lines = outer
        return name

    def ref(self, ref: str) -> str:
        if self.resolver is None:
            raise Unsupported("$ref without a registry")
        resolved = self.resolver.lookup(ref)
        key = id(resolved.contents)  # the registry holds the contents: the same object each time
        if key not in self.refs:
            self.n += 1
            self.refs[key] = name = f"_r{self.n}"  # named first: a recursive $ref calls it
            outer, self.resolver = self.resolver, resolved.resolver
            if id(resolved.contents) in _file_roots():
                self.roots.add(id(resolved.contents))  # a whole file
            try:
                self.defs.append(f"{name} = {self.function(resolved.contents)}")
            finally:
                self.resolver = outer
        return self.refs[key]

    def const(self, value) -> str:
        self.n += 1
        name = f"_c{self.n}"
        self.env[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def fail_unless(self, depth: int, cond: str) -> None:
        self.emit(depth, f"if not ({cond}): return False")

    def schema(self, sch: dict, x: str, depth: int) -> None:
        if sch is True:
            return
        if sch is False:
            self.emit(depth, "return False")
            return
        if not isinstance(sch, dict):
            raise Unsupported(f"a schema that is neither an object nor a boolean: {sch!r}")
        for kw, value in sch.items():
            if kw == "$id" and id(sch) not in self.roots:
                raise Unsupported("$id inside a schema (a new base for its $refs)")
            if kw == "$schema" and value != DRAFT:
                raise Unsupported(f"$schema {value!r}")
            if kw in ANNOTATIONS or kw.startswith("x-"):
                continue
            if kw == "type":
                names = [value] if isinstance(value, str) else list(value)
                for n in names:
                    _TYPES[n]  # noqa: B018 (KeyError for an unknown type, as before)
                self.fail_unless(depth, " or ".join(_INLINE_TYPES[n].format(x=x) if n in _INLINE_TYPES
                                                    else f"_TYPES[{n!r}]({x})" for n in names) or "False")
            elif kw == "const":
                _equal(value, value)  # raises Unsupported for containers
                if isinstance(value, bool):  # only true is true (not 1, not 1.0)
                    self.fail_unless(depth, f"{x} is {value!r}")
                else:
                    self.fail_unless(depth, f"not isinstance({x}, (dict, list)) and _equal({x}, {self.const(value)})")
            elif kw == "enum":
                for v in value:
                    _equal(v, v)
                strings = [v for v in value if v is not None]
                if all(type(v) is str for v in strings):  # a set lookup; _equal on str is `type is str and ==`
                    test = f"(type({x}) is str and {x} in {self.const(frozenset(strings))})"
                    self.fail_unless(depth, f"{x} is None or {test}" if None in value else test)
                else:
                    vs = self.const(tuple(value))
                    self.fail_unless(depth, f"not isinstance({x}, (dict, list)) and any(_equal({x}, v) for v in {vs})")
            elif kw in _BOUNDS:
                applies, measure, fails = _BOUNDS[kw]
                if measure == "len" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                         or value != int(value)):
                    raise Unsupported(f"{kw} {value!r} is not an integer")
                bound = int(value) if measure == "len" else self.const(value)
                self.fail_unless(depth, f"not {applies.format(x=x)} or not ({measure}({x}) {fails} {bound})")
            elif kw == "multipleOf":
                self.fail_unless(depth, f"not _is_number({x}) or is_multiple({x}, {self.const(value)})")
            elif kw == "pattern":
                rx = self.const(re.compile(value))
                self.fail_unless(depth, f"pattern_ok({rx}, {x})" if self.memo
                                 else f"not isinstance({x}, str) or {rx}.search({x}) is not None")
            elif kw == "format":
                self.fail_unless(depth, f"{'format_ok' if self.memo else '_conforms'}({x}, {value!r})")
            elif kw == "required":
                if value:
                    self.fail_unless(depth, f"not isinstance({x}, dict) or ("
                                     + " and ".join(f"{k!r} in {x}" for k in value) + ")")
            elif kw == "$ref":
                self.fail_unless(depth, f"{self.ref(value)}({x})")
            elif kw == "allOf":
                for sub in value:
                    self.schema(sub, x, depth)
            elif kw == "anyOf":
                self.fail_unless(depth, " or ".join(f"{self.function(sub)}({x})" for sub in value))
            elif kw == "oneOf":
                calls = ", ".join(f"{self.function(sub)}({x})" for sub in value)
                self.fail_unless(depth, f"[{calls}].count(True) == 1")
            elif kw == "items":
                if "prefixItems" in sch:
                    raise Unsupported("keyword 'prefixItems'")
                v = self.var()
                self.emit(depth, f"if isinstance({x}, list):")
                self.emit(depth + 1, f"for {v} in {x}:")
                self.emit(depth + 2, "pass")
                self.schema(value, v, depth + 2)
            elif kw == "contains":
                if "minContains" in sch or "maxContains" in sch:
                    raise Unsupported("keyword 'minContains'/'maxContains'")
                f = self.function(value)
                self.fail_unless(depth, f"not isinstance({x}, list) or any({f}(v) for v in {x})")
            elif kw == "properties":
                self.emit(depth, f"if isinstance({x}, dict):")
                self.emit(depth + 1, "pass")
                for name, sub in value.items():
                    v = self.var()
                    self.emit(depth + 1, f"if {name!r} in {x}:")
                    self.emit(depth + 2, f"{v} = {x}[{name!r}]")
                    self.schema(sub, v, depth + 2)
            else:
                raise Unsupported(f"keyword {kw!r}")


def compile_schema(schema: dict, resolver=None, memo: bool = True) -> Check:
    """`schema` as a predicate; `resolver` (referencing.Resolver) resolves its $refs. `memo`:
    format verdicts go through the per-process memo (for values that recur, as clients' URLs
    do; not for values made once each, which would only crowd those out)."""
    gen = _Gen(resolver, memo)
    gen.roots.add(id(schema))
    gen.emit(0, "def check(x):")
    try:
        gen.schema(schema, "x", 1)
    except referencing.exceptions.Unresolvable as exc:
        raise Unsupported(f"$ref: {exc}") from None
    gen.emit(1, "return True")
    code = "\n\n".join([*gen.defs, "\n".join(gen.lines)])
    try:
        compiled = compile(code, "<fastschema>", "exec")
    except (SyntaxError, RecursionError, MemoryError) as exc:  # nested deeper than Python's blocks allow
        raise Unsupported(f"too deep to compile: {exc}") from None
    exec(compiled, gen.env)  # noqa: S102 (our own generated source)
    check = gen.env["check"]
    check.source = code
    return check


@lru_cache(maxsize=1)
def _file_roots() -> frozenset:
    """The ids of the registry's whole files (where $id may be)."""
    reg = registry()
    return frozenset(id(reg[uri].contents) for uri in reg)


@lru_cache(maxsize=None)
def checker(name: str) -> Check:
    """schemas/<name> compiled (its $refs to sibling files included): the verdict of
    `spec.validator(name).is_valid`, for documents the fake makes (no format memo)."""
    contents = schema(name)
    try:
        return compile_schema(contents, registry().resolver(contents.get("$id", BASE + name)), memo=False)
    except Unsupported:  # a keyword not compiled: jsonschema itself, slower
        return validator(name).is_valid
