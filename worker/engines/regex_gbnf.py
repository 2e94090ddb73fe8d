"""A regular expression -> a GBNF grammar whose language is the strings it matches in full.

The pattern is parsed by CPython's own regex parser (`re._parser`: the dialect the
router's validation compiles with), and its syntax tree printed as GBNF, one node at a
time, so the grammar grows linearly with the pattern. llama.cpp's own converter (for JSON
Schema's `pattern`) was the first choice, but it passes `\\d`, `\\w`, `\\s` and `(?:` through
as GBNF it cannot parse.

What GBNF cannot say is refused (`RegexNotSupported`), never approximated by a larger
language: backreferences, lookaround, anchors other than at the ends, word boundaries,
possessive quantifiers and case-insensitive matching. `\\d`, `\\w` and `\\s` are their ASCII
classes, so the output still matches the pattern in Python.
"""

from __future__ import annotations

import re
import re._constants as c  # type: ignore[import-not-found, unused-ignore]
import re._parser as p  # type: ignore[import-not-found, unused-ignore]
from typing import Any

_CLASSES = {
    c.CATEGORY_DIGIT: ("0-9", False),
    c.CATEGORY_NOT_DIGIT: ("0-9", True),
    c.CATEGORY_SPACE: (" \\t\\n\\r\\x0B\\x0C", False),
    c.CATEGORY_NOT_SPACE: (" \\t\\n\\r\\x0B\\x0C", True),
    c.CATEGORY_WORD: ("a-zA-Z0-9_", False),
    c.CATEGORY_NOT_WORD: ("a-zA-Z0-9_", True),
}
_START = (c.AT_BEGINNING, c.AT_BEGINNING_STRING)
_END = (c.AT_END, c.AT_END_STRING)
_SAFE_IN_LITERAL = re.compile(r"[ !#-\[\]-~]")  # printable ASCII but '"' and '\'
_SAFE_IN_CLASS = re.compile(r"[0-9A-Za-z _.,:;!?@#%&*+=<>/'\"|~`{}()$]")


class RegexNotSupported(ValueError):
    """The pattern uses a feature a grammar cannot enforce (the message says which)."""


def regex_to_gbnf(pattern: str) -> str:
    """GBNF with start rule `root` (RegexNotSupported, re.error or RecursionError when the
    pattern cannot be converted)."""
    tree = p.parse(pattern)
    if tree.state.flags & re.IGNORECASE:
        raise RegexNotSupported("case-insensitive matching (?i) is not supported")
    items = list(tree)
    if items and items[0][0] == c.AT and items[0][1] in _START:
        items = items[1:]
    if items and items[-1][0] == c.AT and items[-1][1] in _END:
        items = items[:-1]
    dotall = bool(tree.state.flags & re.DOTALL)
    return f"root ::= {_sequence(items, dotall)}\n"


def _sequence(items: list[tuple[Any, Any]], dotall: bool) -> str:
    parts = [_node(op, av, dotall) for op, av in items]
    return " ".join(parts) if parts else '""'


def _node(op: Any, av: Any, dotall: bool) -> str:
    if op == c.LITERAL:
        return _literal(av)
    if op == c.NOT_LITERAL:
        return f"[^{_class_char(av)}]"
    if op == c.ANY:
        return "[\\x00-\\U0010FFFF]" if dotall else "[^\\n]"
    if op == c.IN:
        return _class(av)
    if op == c.BRANCH:
        return "(" + " | ".join(_sequence(list(alt), dotall) for alt in av[1]) + ")"
    if op == c.SUBPATTERN:
        _group, add_flags, del_flags, sub = av
        if add_flags & re.IGNORECASE:
            raise RegexNotSupported("case-insensitive matching (?i) is not supported")
        inner = (dotall or bool(add_flags & re.DOTALL)) and not del_flags & re.DOTALL
        return f"({_sequence(list(sub), inner)})"
    if op in (c.MAX_REPEAT, c.MIN_REPEAT):  # lazy or greedy: the same language
        low, high, sub = av
        return f"({_sequence(list(sub), dotall)}){_quantifier(low, high)}"
    if op == c.AT:
        raise RegexNotSupported("anchors and word boundaries only at the pattern's ends")
    if op in (c.GROUPREF, c.GROUPREF_EXISTS):
        raise RegexNotSupported("backreferences are not supported")
    if op in (c.ASSERT, c.ASSERT_NOT):
        raise RegexNotSupported("lookahead and lookbehind are not supported")
    raise RegexNotSupported(f"{str(op).lower().replace('_', ' ')} is not supported")


def _quantifier(low: int, high: Any) -> str:
    if high is c.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _literal(code: int) -> str:
    ch = chr(code)
    return f'"{ch}"' if _SAFE_IN_LITERAL.fullmatch(ch) else f'"{_escape(code)}"'


def _class_char(code: int) -> str:
    ch = chr(code)
    return ch if _SAFE_IN_CLASS.fullmatch(ch) else _escape(code)


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _class(items: list[tuple[Any, Any]]) -> str:
    negated = bool(items) and items[0][0] == c.NEGATE
    members: list[str] = []
    complements: list[str] = []
    for op, av in items[1:] if negated else items:
        if op == c.LITERAL:
            members.append(_class_char(av))
        elif op == c.RANGE:
            members.append(f"{_class_char(av[0])}-{_class_char(av[1])}")
        elif op == c.CATEGORY and av in _CLASSES:
            text, complement = _CLASSES[av]
            (complements if complement else members).append(text)
        else:
            raise RegexNotSupported(f"{str(op).lower()} in a character class is not supported")
    if not complements:
        return f"[{'^' if negated else ''}{''.join(members)}]"
    if len(complements) == 1 and not members and not negated:  # [\D] is \D
        return f"[^{complements[0]}]"
    if len(complements) == 1 and not members:  # [^\D] is \d
        return f"[{complements[0]}]"
    raise RegexNotSupported("\\D, \\S or \\W inside a larger character class is not supported")
