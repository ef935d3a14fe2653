"""Every diagnostic code esperc can emit, with a one-line summary.

Codes go by phase: E00xx syntax, E01xx names, E02xx types and shapes, E03xx resources, E04xx
target, E05xx tuning and runtime, E06xx IR text input. ``docs/errors.md`` documents each code and
a unit test checks that the two agree.
"""

from __future__ import annotations

CODES: dict[str, str] = {
    # E00xx: syntax
    "E0001": "unexpected token",
    "E0002": "unexpected character",
    "E0003": "unexpected end of file",
    "E0004": "source is not valid UTF-8",
    "E0005": "source too large or nested too deeply",
    # E01xx: names
    "E0101": "unknown name",
    "E0102": "name declared twice",
    "E0103": "unknown op or function",
    "E0104": "recursive function call",
    "E0105": "wrong number of arguments",
    "E0106": "unknown or repeated keyword argument",
    "E0107": "missing return",
    "E0108": "unknown attribute in -D override",
    "E0109": "no blueprint, or unknown blueprint name",
    "E0110": "assignment to a declared input, param, dim or attr",
    "E0111": "return is not the last statement of a body",
    # E02xx: types and shapes
    "E0201": "dtype not allowed here",
    "E0202": "wrong rank",
    "E0203": "shapes cannot broadcast",
    "E0204": "matrix product inner dimensions differ",
    "E0205": "axis out of range",
    "E0206": "reshape changes the number of elements",
    "E0207": "branches of an if assign different names or types",
    "E0208": "condition is neither a compile-time attr nor a rank-0 bool input",
    "E0209": "invalid dimension expression",
    "E0210": "require constraint is false",
    "E0211": "invalid attribute value",
    "E0212": "invalid keyword argument value",
    "E0213": "invalid dimension range",
    "E0214": "expression is not a tensor",
    "E0215": "constant expression out of range or not computable",
    # E03xx: resources
    "E0301": "kernel region does not fit in shared memory",
    # E04xx: target
    "E0401": "unknown or unsupported target",
    # E05xx: tuning and runtime
    "E0501": "input does not satisfy a guard",
    "E0502": "cannot read inputs file",
    # E06xx: IR text input
    "E0601": "IR syntax error",
    "E0602": "IR does not verify",
    "E0603": "unknown pass or bad pass pipeline",
}
